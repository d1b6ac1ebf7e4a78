//! Guests for VM tests: the guest kernel finder and busybox initramfs builder of metac-block, which `metac run
//! --vm` uses too.

pub use metac_block::vm::initramfs::{Error, GuestKernel, Initramfs, DISK_MODULES};
