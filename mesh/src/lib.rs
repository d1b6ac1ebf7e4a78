//! metac-mesh: who a node is (identity, overlay address), what it may hand out (capability tokens and refs),
//! what it tells the mesh (signed adverts), and the sans-IO core that keeps every node's view of the mesh in sync.

pub mod advert;
pub mod core;
pub mod identity;
pub mod kind;
pub mod net;
pub mod reference;
pub mod token;

pub use identity::{Identity, NodeKey};
pub use kind::{Kind, Rights};
pub use reference::Ref;
pub use token::{Caveat, Grant, ResourceId, Token, TokenId, VerifyError};
