//! The resource kinds this build serves: one line each. A kind brings everything of its own (exporter, binds, API
//! routes) from its crate under resources/; see docs/adding-a-kind.md.

use std::sync::Arc;

use metac_resource::Plugin;

use crate::Config;

/// Every kind this node serves, with the defaults.
pub fn builtin() -> Vec<Arc<dyn Plugin>> {
    kinds(None)
}

/// Every kind this node serves, as `config` sets them up (the fs kind's cache size).
pub fn configured(config: &Config) -> Vec<Arc<dyn Plugin>> {
    kinds(config.cache_size)
}

fn kinds(cache_size: Option<u64>) -> Vec<Arc<dyn Plugin>> {
    let cache = cache_size.unwrap_or(metac_fs::cache::DEFAULT_LIMIT);
    vec![
        Arc::new(metac_block::File),                     // file and block devices over NBD
        Arc::new(metac_fs::Fs::with_cache_limit(cache)), // directory trees over metac-fs/2, mounted with FUSE
        Arc::new(metac_compute::Compute::default()),     // containers (metac run)
        Arc::new(metac_net::Net::default()),             // Ethernet segments over TAP devices
    ]
}
