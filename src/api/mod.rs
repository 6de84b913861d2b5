//! The API's schema, shared by both front doors.
//!
//! The messages of `proto/quarry/v1/quarry.proto` are the one description of every request
//! and reply: gRPC sends them as protobuf, the HTTP/JSON API as JSON (the proto3 JSON mapping
//! with the proto's field names, [`json`]). Because both doors carry the same messages into
//! the same service functions ([`crate::service::Service`]), a search over HTTP and over gRPC
//! cannot disagree, and the OpenAPI document is generated from the same descriptors.
//!
//! - [`pb`]: the code `build.rs` generates (messages, and tonic's stubs, which only `grpc`
//!   uses).
//! - [`convert`], [`meta_convert`], [`eval_convert`]: messages <-> core types. Shapes that only exist on the
//!   wire (enums, oneofs, page tokens) are checked here; limits are checked by the engine.
//! - [`json`]: proto3 JSON for any message, driven by the descriptors.

pub mod convert;
pub mod eval_convert;
pub mod jobs;
pub mod json;
pub mod meta_convert;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("quarry.v1");
    /// Encoded descriptor set of the Quarry protos (served by reflection, read by [`super::json`]).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/quarry_descriptor.bin"));
}
