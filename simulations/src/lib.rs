//! metac-sim: the real mesh core ([`metac_mesh::core::Core`]) run N times in a deterministic discrete-event
//! simulator ([`sim`]), real `metac node`s in network namespaces ([`netns`]), and the reports and plots both
//! write in the same format ([`report`], [`plot`]). DESIGN section 9.

pub mod model;
pub mod netns;
pub mod plot;
pub mod report;
pub mod sim;
