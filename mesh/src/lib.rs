//! metac-mesh: who a node is (identity, overlay address), what it may hand out (capability tokens and refs),
//! what it tells the mesh (signed adverts), and the sans-IO core that keeps every node's view of the mesh in sync.

pub mod identity;

pub use identity::{Identity, NodeKey};
