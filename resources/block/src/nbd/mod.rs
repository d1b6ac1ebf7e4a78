//! The NBD protocol as metac speaks it: [`proto`] holds the wire messages; the server and client drivers live in
//! the crate root modules that use them.

pub mod proto;
