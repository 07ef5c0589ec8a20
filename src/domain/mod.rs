//! The domain layer: what a section, an entity event and a frame are, and the
//! rules about them. No I/O, no runtime: everything here is a pure function of
//! its inputs, so it is unit- and property-tested directly.

pub mod access;
pub mod audience;
pub mod entity;
pub mod envelope;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod position;
pub mod protocol;
pub mod snapshot;
pub mod timestamp;
