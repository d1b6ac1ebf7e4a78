//! metac file and block export over the NBD protocol
