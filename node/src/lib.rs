//! metac node daemon: runtime, store, local API, resource registry
