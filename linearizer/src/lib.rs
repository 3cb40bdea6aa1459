//! pi-linearizer
