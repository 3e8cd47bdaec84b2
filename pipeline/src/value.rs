//! Between record bytes, JSON and CEL values.
//!
//! JSON integers become CEL `int` when they fit (so `value.n + 1` works:
//! CEL has no implicit uint/int arithmetic), else `uint`, else `double`.

use std::collections::HashMap;

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use cel::objects::Key;
use cel::Value;
use millrace_crds::Format;

/// A CEL result as JSON; errors name what cannot be represented.
pub fn cel_to_json(v: &Value) -> Result<serde_json::Value, String> {
    Ok(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"))?,
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::Bytes(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        Value::List(items) => {
            serde_json::Value::Array(items.iter().map(cel_to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let key = match k {
                    Key::String(s) => s.to_string(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                out.insert(key, cel_to_json(v)?);
            }
            serde_json::Value::Object(out)
        }
        other => return Err(format!("{other:?} cannot be written to a record")),
    })
}

/// A key or value bound to an expression's variable: it may borrow the
/// record's bytes.
pub type Bound<'a> = Box<dyn Val + 'a>;

/// Parses JSON straight into the CEL values expressions read, with no
/// intermediate `serde_json::Value` or `cel::Value`: strings without escapes
/// (and map keys) borrow the record's bytes. With a field list, an object
/// builds only those fields; the others are parsed (validated) and dropped.
/// Nested values are built whole.
struct ValSeed<'f>(Option<&'f [String]>);

impl<'de> serde::de::DeserializeSeed<'de> for ValSeed<'_> {
    type Value = Bound<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Bound<'de>, D::Error> {
        d.deserialize_any(ValVisitor(self.0))
    }
}

struct ValVisitor<'f>(Option<&'f [String]>);

impl<'de> serde::de::Visitor<'de> for ValVisitor<'_> {
    type Value = Bound<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelBool::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelInt::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Bound<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelUInt::from(v)),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelDouble::from(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelString::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelString::from(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelString::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelNull))
    }
    fn visit_none<E>(self) -> Result<Bound<'de>, E> {
        Ok(Box::new(CelNull))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bound<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(ValSeed(None))? {
            items.push(v);
        }
        Ok(Box::new(CelList::from(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Bound<'de>, A::Error> {
        let wanted = |k: &CelMapKey<'_>| {
            self.0
                .is_none_or(|only| only.iter().any(|f| *k == CelMapKey::from(f.as_str())))
        };
        let capacity = self.0.map_or(map.size_hint().unwrap_or(8), <[String]>::len);
        let mut fields = HashMap::with_capacity(capacity);
        while let Some(k) = map.next_key_seed(KeySeed)? {
            if wanted(&k) {
                let v = map.next_value_seed(ValSeed(None))?;
                fields.insert(k, v);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Box::new(CelMap::from(fields)))
    }
}

/// A JSON object key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = CelMapKey<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<CelMapKey<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = CelMapKey<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<CelMapKey<'de>, E> {
        Ok(CelMapKey::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<CelMapKey<'de>, E> {
        Ok(CelMapKey::from(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<CelMapKey<'de>, E> {
        Ok(CelMapKey::from(v))
    }
}

fn parse_json<'a>(
    bytes: &'a [u8],
    fields: Option<&[String]>,
) -> Result<Bound<'a>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = ValSeed(fields).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Reads a key or value in its declared format.
pub fn decode(bytes: Option<&[u8]>, format: Format) -> Result<Bound<'_>, String> {
    decode_fields(bytes, format, None)
}

/// Reads a key or value in its declared format; of a JSON object, only
/// `fields` (all when `None`).
pub fn decode_fields<'a>(
    bytes: Option<&'a [u8]>,
    format: Format,
    fields: Option<&[String]>,
) -> Result<Bound<'a>, String> {
    let Some(bytes) = bytes else {
        return Ok(Box::new(CelNull));
    };
    match format {
        Format::Bytes => Ok(Box::new(CelBytes::from(bytes))),
        Format::String => std::str::from_utf8(bytes)
            .map(|s| Box::new(CelString::from(s)) as Bound<'_>)
            .map_err(|e| format!("not UTF-8: {e}")),
        Format::Json => parse_json(bytes, fields).map_err(|e| format!("not JSON: {e}")),
    }
}

/// A computed key or value, to bind in place of the record's.
pub fn bind(v: Value) -> Result<Bound<'static>, String> {
    Bound::try_from(v).map_err(|e| format!("{e:?}"))
}

/// Writes a key or value in the source's format.
pub fn encode(v: &Value, format: Format) -> Result<Option<Vec<u8>>, String> {
    if matches!(v, Value::Null) {
        return Ok(None);
    }
    match (format, v) {
        (_, Value::Bytes(b)) => Ok(Some(b.to_vec())),
        (Format::Json, other) => serde_json::to_vec(&cel_to_json(other)?)
            .map(Some)
            .map_err(|e| e.to_string()),
        (_, Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
        (_, Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Bool(_)) => {
            Ok(Some(cel_to_json(v)?.to_string().into_bytes()))
        }
        (format, other) => Err(format!("a {format:?} key or value cannot hold {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn decoded(bytes: &[u8], format: Format) -> Result<Value, String> {
        decode(Some(bytes), format).map(|v| v.as_ref().try_into().unwrap())
    }

    #[test]
    fn a_field_list_builds_only_those_fields_and_still_validates_the_rest() {
        let only = ["amount".to_string(), "customer".to_string()];
        let bytes = br#"{"id": "a\"b", "amount": 5, "customer": {"tier": "gold"}, "items": [1, {"x": null}]}"#;
        let v: Value = decode_fields(Some(bytes), Format::Json, Some(&only))
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        let Value::Map(m) = &v else { panic!("{v:?}") };
        let mut keys: Vec<String> = m.map.keys().map(|k| format!("{k:?}")).collect();
        keys.sort();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(
            m.map[&Key::String(Arc::new("amount".into()))],
            Value::Int(5)
        );
        let Value::Map(customer) = &m.map[&Key::String(Arc::new("customer".into()))] else {
            panic!("a nested value is built whole")
        };
        assert_eq!(customer.map.len(), 1);

        for malformed in [&br#"{"amount": 5, "id": [1, }"#[..], br#"{"amount": 5} x"#] {
            let err = decode_fields(Some(malformed), Format::Json, Some(&only)).err();
            assert!(
                err.is_some_and(|e| e.starts_with("not JSON")),
                "{malformed:?}"
            );
        }
        let scalar: Value = decode_fields(Some(b"7"), Format::Json, Some(&only))
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        assert_eq!(scalar, Value::Int(7), "not an object: built as is");
    }

    #[test]
    fn json_integers_are_ints_so_arithmetic_works() {
        let v = decoded(
            br#"{"n": 5, "big": 18446744073709551615, "f": 1.5}"#,
            Format::Json,
        )
        .unwrap();
        let Value::Map(m) = &v else { panic!() };
        assert_eq!(m.map[&Key::String(Arc::new("n".into()))], Value::Int(5));
        assert_eq!(
            m.map[&Key::String(Arc::new("big".into()))],
            Value::UInt(u64::MAX)
        );
        assert_eq!(m.map[&Key::String(Arc::new("f".into()))], Value::Float(1.5));
    }

    #[test]
    fn round_trips_and_errors() {
        let v = decoded(br#"{"a": [1, "x\u0041", null, true]}"#, Format::Json).unwrap();
        assert_eq!(
            cel_to_json(&v).unwrap(),
            serde_json::json!({"a": [1, "xA", null, true]})
        );
        assert!(decoded(b"{nope", Format::Json)
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(decoded(&[0xff, 0xfe], Format::String)
            .unwrap_err()
            .starts_with("not UTF-8"));
        assert_eq!(
            encode(&Value::String(Arc::new("k".into())), Format::String).unwrap(),
            Some(b"k".to_vec())
        );
        assert_eq!(
            encode(&Value::Int(7), Format::String).unwrap(),
            Some(b"7".to_vec())
        );
        assert_eq!(encode(&Value::Null, Format::Json).unwrap(), None);
    }
}
