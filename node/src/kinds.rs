//! The resource kinds this build serves: one line each. A kind brings everything of its own (exporter, binds, API
//! routes) from its crate under resources/; see docs/adding-a-kind.md.

use std::sync::Arc;

use metac_resource::Plugin;

/// Every kind this node serves.
pub fn builtin() -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(metac_block::File),                 // file and block devices over NBD
        Arc::new(metac_fs::Fs),                      // directory trees over metac-fs/2, mounted with FUSE
        Arc::new(metac_compute::Compute::default()), // containers (metac run)
        Arc::new(metac_net::Net::default()),         // Ethernet segments over TAP devices
    ]
}
