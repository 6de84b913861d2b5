//! The OpenAPI 3.1 document of the HTTP API, generated at start-up from the route table
//! ([`super::routes`]) and the proto descriptors ([`crate::api::json`]), in utoipa's OpenAPI
//! model. Message schemas follow what the JSON mapping accepts and writes: the proto's field
//! names, enums by name, 64-bit integers as numbers, maps as objects, every field optional
//! (a field left out holds its default), no field the message does not have.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, PathItem, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder,
};

use super::routes::{BodyKind, ReplyKind, Route};
use crate::error::{Code, Error, Result};

/// Where the document is served.
pub const PATH: &str = "/v1/openapi.json";

/// The collection name the document's examples use.
pub const EXAMPLE_COLLECTION: &str = "docs";

/// The component name of the error body.
const ERROR: &str = "Error";

/// The document, as JSON.
pub fn document(routes: &[Route]) -> Result<Vec<u8>> {
    let pool = crate::api::json::pool()?;
    let mut components = ComponentsBuilder::new()
        .schema(ERROR, error_schema())
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    for m in pool
        .all_messages()
        .filter(|m| m.package_name() == "quarry.v1")
    {
        components = components.schema(m.full_name(), message_schema(&m));
    }
    let mut paths = PathsBuilder::new();
    for route in routes {
        paths = paths.path(
            route.path,
            PathItem::new(method(&route.verb)?, operation(route)?),
        );
    }
    let openapi_doc = OperationBuilder::new()
        .operation_id(Some("GetOpenApi"))
        .summary(Some("This document"))
        .security(SecurityRequirement::default())
        .response(
            "200",
            ResponseBuilder::new()
                .description("The OpenAPI document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                )
                .build(),
        );
    paths = paths.path(PATH, PathItem::new(HttpMethod::Get, openapi_doc));
    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Quarry HTTP/JSON API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The operations of Quarry's gRPC API over HTTP/JSON: the same messages \
                     (proto3 JSON with the proto's field names), keys, limits and errors. An \
                     error is a JSON body {code, message, request_id} whose code is the gRPC \
                     code name.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some([
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("api_key", Vec::<String>::new()),
        ]))
        .build();
    let mut json = serde_json::to_value(&doc)
        .map_err(|e| Error::internal(format!("the OpenAPI document does not serialize: {e}")))?;
    for route in routes.iter().filter(|r| r.reply == ReplyKind::Sse) {
        let verb = route.verb.as_str().to_lowercase();
        json["paths"][route.path][verb]["responses"]["200"]["content"]["text/event-stream"] =
            serde_json::json!({ "schema": sse_event_schema(&route.response) });
    }
    serde_json::to_vec(&json)
        .map_err(|e| Error::internal(format!("the OpenAPI document does not serialize: {e}")))
}

/// One server-sent event as the OpenAPI 3.2 convention (which schema-driven tools apply to
/// 3.1 documents too) describes it: an object with the event's type and its `data`, here
/// JSON: a reply message, or for an `error` event the error body.
fn sse_event_schema(message: &str) -> serde_json::Value {
    let data = |schema: &str| {
        serde_json::json!({
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": format!("#/components/schemas/{schema}")},
        })
    };
    serde_json::json!({
        "oneOf": [
            {
                "type": "object",
                "required": ["data"],
                "properties": {"event": {"const": "message"}, "data": data(message)},
            },
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {"event": {"const": "error"}, "data": data(ERROR)},
            },
        ]
    })
}

fn method(verb: &http::Method) -> Result<HttpMethod> {
    Ok(match *verb {
        http::Method::GET => HttpMethod::Get,
        http::Method::POST => HttpMethod::Post,
        http::Method::PUT => HttpMethod::Put,
        http::Method::DELETE => HttpMethod::Delete,
        _ => return Err(Error::internal(format!("no OpenAPI method for {verb}"))),
    })
}

/// Raw bytes.
fn binary() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/octet-stream")
        .into()
}

fn reference(full_name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(full_name))
}

fn operation(route: &Route) -> Result<utoipa::openapi::path::Operation> {
    let request = crate::api::json::descriptor(&route.request)?;
    let mut op = OperationBuilder::new()
        .operation_id(Some(format!("{}{}", route.method, operation_suffix(route))))
        .summary(Some(route.summary))
        .tag(route.service.trim_start_matches("quarry.v1."))
        .description(Some(format!(
            "The `{}` operation of `{}`.",
            route.method, route.service
        )));
    let names = path_names(route.path);
    for (name, field) in names.iter().zip(route.path_fields) {
        let mut schema = field_schema(&field_of(&request, field)?);
        if *name == "collection" {
            // Documented with its rule and an example name, so clients (and schema-driven
            // tools) know what a name may be.
            schema = ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(crate::engine::COLLECTION_NAME_PATTERN))
                .examples([serde_json::json!(EXAMPLE_COLLECTION)])
                .into();
        }
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!("Sets the request's `{field}`.")))
                .schema(Some(schema)),
        );
    }
    for field in route.query_fields {
        let schema = field_schema(&field_of(&request, field)?);
        op = op.parameter(
            ParameterBuilder::new()
                .name(*field)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(schema)),
        );
    }
    let body = match route.body {
        BodyKind::None => None,
        BodyKind::Json => Some(("application/json", reference(&route.request))),
        BodyKind::Ndjson => Some(("application/x-ndjson", reference(&route.request))),
        // Any content type is read as the archive's bytes.
        BodyKind::Tar => Some(("application/octet-stream", binary())),
    };
    if let Some((ct, schema)) = body {
        let mut request_body = RequestBodyBuilder::new()
            .required(Some(Required::False))
            .content(
                ct,
                ContentBuilder::new().schema(Some(schema.clone())).build(),
            );
        if route.body == BodyKind::Ndjson {
            // A body of one line is one JSON object: the same route takes it as JSON.
            request_body = request_body.content(
                "application/json",
                ContentBuilder::new().schema(Some(schema)).build(),
            );
        }
        op = op.request_body(Some(request_body.build()));
    }
    let (ct, schema, what) = match route.reply {
        ReplyKind::Json => ("application/json", reference(&route.response), "The reply"),
        ReplyKind::Sse => (
            "text/event-stream",
            reference(&route.response),
            "Server-sent events: `data:` holds one reply message as JSON; an `event: error` \
             holds the JSON error body and ends the stream",
        ),
        ReplyKind::Tar => ("application/x-tar", binary(), "The archive"),
    };
    Ok(op
        .response(
            "200",
            ResponseBuilder::new()
                .description(what)
                .content(ct, ContentBuilder::new().schema(Some(schema)).build())
                .build(),
        )
        .response(
            "default",
            ResponseBuilder::new()
                .description("An error: the HTTP status of its gRPC code (400, 401, 403, 404, 409, 412, 429 with Retry-After, 499, 503, 504, 500)")
                .content("application/json", ContentBuilder::new().schema(Some(reference(ERROR))).build())
                .build(),
        )
        .build())
}

/// Distinguishes two routes of one operation (ListDocuments by GET and by POST).
fn operation_suffix(route: &Route) -> &'static str {
    match (route.body, route.path.rsplit_once(':')) {
        (BodyKind::Json, Some(_)) if route.method == "ListDocuments" => "WithBody",
        _ => "",
    }
}

/// The parameter names of an axum path, in order.
fn path_names(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(n, _)| n))
        .collect()
}

fn field_of(message: &MessageDescriptor, name: &str) -> Result<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .ok_or_else(|| Error::internal(format!("{} has no field {name}", message.full_name())))
}

fn error_schema() -> Schema {
    let codes = Code::ALL
        .iter()
        .filter(|c| **c != Code::Ok)
        .map(|c| c.name());
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes)),
        )
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .property("request_id", ObjectBuilder::new().schema_type(Type::String))
        .required("code")
        .required("message")
        .into()
}

fn message_schema(m: &MessageDescriptor) -> Schema {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    for f in m.fields() {
        object = object.property(f.name(), field_schema(&f));
    }
    object.into()
}

/// A field's schema, repeated and map fields included.
fn field_schema(f: &FieldDescriptor) -> RefOr<Schema> {
    if f.is_map() {
        if let Kind::Message(entry) = f.kind() {
            let value = entry.map_entry_value_field();
            return ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::RefOr(kind_schema(
                    &value.kind(),
                ))))
                .into();
        }
    }
    let item = kind_schema(&f.kind());
    if f.is_list() {
        return ArrayBuilder::new().items(item).into();
    }
    item
}

fn integer(format: KnownFormat, min: i128, max: i128) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(format)))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .into()
}

fn kind_schema(kind: &Kind) -> RefOr<Schema> {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            integer(KnownFormat::Int32, i32::MIN.into(), i32::MAX.into())
        }
        Kind::Uint32 | Kind::Fixed32 => integer(KnownFormat::Int64, 0, u32::MAX.into()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            integer(KnownFormat::Int64, i64::MIN.into(), i64::MAX.into())
        }
        Kind::Uint64 | Kind::Fixed64 => integer(KnownFormat::Int64, 0, u64::MAX.into()),
        Kind::Float => ObjectBuilder::new()
            .schema_type(Type::Number)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Float)))
            .into(),
        Kind::Double => ObjectBuilder::new()
            .schema_type(Type::Number)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
            .into(),
        Kind::Bool => ObjectBuilder::new().schema_type(Type::Boolean).into(),
        Kind::String => ObjectBuilder::new().schema_type(Type::String).into(),
        Kind::Bytes => ObjectBuilder::new()
            .schema_type(Type::String)
            .content_encoding("base64")
            .into(),
        Kind::Enum(e) => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(e.values().map(|v| v.name().to_string())))
            .into(),
        Kind::Message(m) => reference(m.full_name()),
    }
}
