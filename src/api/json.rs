//! The API's messages as JSON: the proto3 JSON mapping, driven by the descriptors `build.rs`
//! embeds, so the HTTP API has no second set of types to drift from the proto.
//!
//! Replies use the proto's field names (`top_k`, not `topK`), enums by name, 64-bit integers
//! as JSON numbers, and every field without presence written even when it holds its default
//! (a client sees `"missing": []`, not an absent key). Requests accept the proto names and the
//! lowerCamelCase names the mapping also allows, enums by name or number; an unknown field is
//! an error (INVALID_ARGUMENT), not silently dropped, so a misspelt `top_k` cannot pass
//! unnoticed. Path and query parameters are set on the message by field name
//! ([`decode`]'s `params`), checked like the body.

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
    Value,
};

use crate::error::{quote, Error, Result};

/// The descriptors of the Quarry protos.
pub fn pool() -> Result<&'static DescriptorPool> {
    static POOL: OnceLock<std::result::Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(super::pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::internal(format!("the embedded descriptors do not decode: {e}")))
}

/// The descriptor of the message named `full_name` (`quarry.v1.SearchRequest`).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor> {
    pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| Error::internal(format!("no message {full_name} in the descriptors")))
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

/// A request message from a JSON body (empty: `{}`) and from path and query parameters,
/// each a (field name, text) pair. A parameter and the body may both name a field only with
/// the same value.
pub fn decode<T: prost::Message + prost::Name + Default>(
    body: &[u8],
    params: &[(&str, &str)],
) -> Result<T> {
    let desc = descriptor(&T::full_name())?;
    let mut message = if body.iter().all(u8::is_ascii_whitespace) {
        DynamicMessage::new(desc.clone())
    } else {
        let mut de = serde_json::Deserializer::from_slice(body);
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let m = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                Error::invalid(format!(
                    "the request body is not a valid {}: {}",
                    desc.name(),
                    cut(&e.to_string())
                ))
            })?;
        m
    };
    for (name, text) in params {
        let field = desc
            .get_field_by_name(name)
            .ok_or_else(|| Error::invalid(format!("unknown parameter {}", quote(name))))?;
        if field.is_list() || field.is_map() {
            return Err(Error::invalid(format!(
                "parameter {} takes a list: send it in the body",
                quote(name)
            )));
        }
        let value = scalar(&field.kind(), name, text)?;
        if message.has_field(&field) && *message.get_field(&field) != value {
            return Err(Error::invalid(format!(
                "{} is {} in the path or query but different in the body",
                quote(name),
                quote(text)
            )));
        }
        message.set_field(&field, value);
    }
    message
        .transcode_to::<T>()
        .map_err(|e| Error::invalid(format!("the request does not encode: {e}")))
}

/// A parameter's text as a value of the field's kind.
fn scalar(kind: &Kind, name: &str, text: &str) -> Result<Value> {
    let bad = || {
        Error::invalid(format!(
            "parameter {} has an invalid value {}",
            quote(name),
            quote(text)
        ))
    };
    Ok(match kind {
        Kind::String => Value::String(text.to_string()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| bad())?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| bad())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| bad())?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad())?),
        Kind::Float => Value::F32(text.parse().map_err(|_| bad())?),
        Kind::Double => Value::F64(text.parse().map_err(|_| bad())?),
        Kind::Enum(e) => {
            let v = e
                .get_value_by_name(text)
                .or_else(|| text.parse().ok().and_then(|n| e.get_value(n)))
                .ok_or_else(bad)?;
            Value::EnumNumber(v.number())
        }
        Kind::Bytes | Kind::Message(_) => {
            return Err(Error::invalid(format!(
                "parameter {} is not a scalar: send it in the body",
                quote(name)
            )))
        }
    })
}

/// A reply message as JSON.
pub fn encode<T: prost::Message + prost::Name>(message: &T) -> Result<Vec<u8>> {
    let desc = descriptor(&T::full_name())?;
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(message)
        .map_err(|e| Error::internal(format!("reply does not transcode: {e}")))?;
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::new(&mut out);
    dynamic
        .serialize_with_options(&mut ser, &serialize_options())
        .map_err(|e| Error::internal(format!("reply does not serialize: {e}")))?;
    Ok(out)
}

/// A decoder's message (which may quote the input) cut to a bounded length.
fn cut(message: &str) -> String {
    let clipped = crate::error::clip(message, 300);
    let mut s: String = clipped
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clipped.len() < message.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;

    #[test]
    fn requests_decode_with_params_and_replies_use_proto_names() {
        let r: pb::SearchRequest = decode(
            br#"{"query": "q", "top_k": 3, "mode": "SEARCH_MODE_LEXICAL"}"#,
            &[("collection", "c")],
        )
        .expect("decodes");
        assert_eq!(
            (r.collection.as_str(), r.top_k, r.query.as_str()),
            ("c", 3, "q")
        );
        assert_eq!(r.mode, pb::SearchMode::Lexical as i32);
        let camel: pb::SearchRequest = decode(br#"{"topK": 4}"#, &[]).expect("camel case");
        assert_eq!(camel.top_k, 4);
        let bad = decode::<pb::SearchRequest>(br#"{"top_kk": 3}"#, &[]).unwrap_err();
        assert!(matches!(bad, Error::InvalidArgument(_)), "{bad}");
        let clash = decode::<pb::SearchRequest>(br#"{"collection": "a"}"#, &[("collection", "b")]);
        assert!(matches!(clash, Err(Error::InvalidArgument(_))));
        let trailing = decode::<pb::SearchRequest>(br#"{} {}"#, &[]);
        assert!(matches!(trailing, Err(Error::InvalidArgument(_))));
        let json = encode(&pb::GetDocumentsResponse::default()).expect("encodes");
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"documents":[],"missing":[]}"#
        );
    }
}
