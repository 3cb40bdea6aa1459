//! pi-client
