//! pi-server
