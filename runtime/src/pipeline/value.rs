//! Between record bytes, JSON and CEL values.
//!
//! JSON integers become CEL `int` when they fit (so `value.n + 1` works:
//! CEL has no implicit uint/int arithmetic), else `uint`, else `double`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
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

/// Parses JSON straight into CEL values, without an intermediate
/// `serde_json::Value` (half the allocations of going through one).
struct CelSeed;

impl<'de> serde::de::DeserializeSeed<'de> for CelSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(CelVisitor)
    }
}

struct CelVisitor;

impl<'de> serde::de::Visitor<'de> for CelVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::UInt(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v)))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(CelSeed)? {
            items.push(v);
        }
        Ok(Value::List(Arc::new(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = HashMap::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(CelSeed)?;
            fields.insert(Key::String(Arc::new(k)), v);
        }
        Ok(Value::Map(Map {
            map: Arc::new(fields),
        }))
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = CelSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Reads a key or value in its declared format.
pub fn decode(bytes: Option<&[u8]>, format: Format) -> Result<Value, String> {
    let Some(bytes) = bytes else {
        return Ok(Value::Null);
    };
    match format {
        Format::Bytes => Ok(Value::Bytes(Arc::new(bytes.to_vec()))),
        Format::String => std::str::from_utf8(bytes)
            .map(|s| Value::String(Arc::new(s.to_string())))
            .map_err(|e| format!("not UTF-8: {e}")),
        Format::Json => parse_json(bytes).map_err(|e| format!("not JSON: {e}")),
    }
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

    #[test]
    fn json_integers_are_ints_so_arithmetic_works() {
        let v = decode(
            Some(br#"{"n": 5, "big": 18446744073709551615, "f": 1.5}"#),
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
        let v = decode(Some(br#"{"a": [1, "x", null, true]}"#), Format::Json).unwrap();
        assert_eq!(
            cel_to_json(&v).unwrap(),
            serde_json::json!({"a": [1, "x", null, true]})
        );
        assert!(decode(Some(b"{nope"), Format::Json)
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(decode(Some(&[0xff, 0xfe]), Format::String)
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
