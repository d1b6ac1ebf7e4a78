//! metac netns lab harness and cross-crate integration tests
