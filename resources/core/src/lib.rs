//! metac resources: kinds, transport trait, stream handshake and framing shared by all kinds
