//! Oblivious transfer: Chou-Orlandi base OT over Ristretto ([`base`]), IKNP correlated-OT extension
//! whose correlation is the garbler's free-XOR delta ([`iknp`]), and the bit-matrix transpose it needs
//! ([`transpose`]).

pub mod base;
pub mod iknp;
pub mod transpose;

pub use iknp::{CotReceiver, CotSender};
