//! serde's `Deserializer` over a [`Node`] tree, with yaml.v2's typing: a plain scalar is
//! whatever the field reading it wants (`limits.cpu: 2` into a string is `"2"`, `ephemeral:
//! yes` into a bool is `true`), null into a string is `""` and into a list or map is empty.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};

use super::Node;

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// YAML 1.1's booleans, as yaml.v2 reads them.
pub(super) fn resolve_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

/// An integer in YAML's notations (`_` separators, `0x`, `0o`, `0b`).
fn resolve_int(s: &str) -> Option<i128> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let body = body.replace('_', "");
    let (digits, radix) = if let Some(h) = body.strip_prefix("0x") {
        (h, 16)
    } else if let Some(o) = body.strip_prefix("0o") {
        (o, 8)
    } else if let Some(b) = body.strip_prefix("0b") {
        (b, 2)
    } else {
        (body.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

fn resolve_float(s: &str) -> Option<f64> {
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let t = s.replace('_', "");
    let body = t.strip_prefix(['-', '+']).unwrap_or(&t);
    if body.is_empty() || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || "eE.+-".contains(c))
    {
        return None;
    }
    t.parse().ok()
}

/// The `Deserializer` methods of the number types, each reading the node as an integer or a
/// float.
macro_rules! numbers {
    (int: $($i:ident)*; float: $($f:ident)*) => {
        $(fn $i<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.int(v)
        })*
        $(fn $f<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.float(v)
        })*
    };
}

/// Reads one node.
pub struct De<'a>(pub &'a Node);

impl<'a> De<'a> {
    fn unexpected(&self) -> Unexpected<'a> {
        match self.0 {
            Node::Null => Unexpected::Unit,
            Node::Bool(b) => Unexpected::Bool(*b),
            Node::Num(s) | Node::Str(s) | Node::Plain(s) => Unexpected::Str(s),
            Node::Seq(_) => Unexpected::Seq,
            Node::Map(_) => Unexpected::Map,
        }
    }

    fn invalid<T>(&self, exp: &dyn de::Expected) -> Result<T, Error> {
        Err(de::Error::invalid_type(self.unexpected(), exp))
    }

    /// The text of a plain scalar or number (what may be read as a number or bool).
    fn plain(&self) -> Option<&'a str> {
        match self.0 {
            Node::Plain(s) | Node::Num(s) => Some(s),
            _ => None,
        }
    }

    fn int<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.plain().and_then(resolve_int) {
            Some(i) if i >= 0 => match u64::try_from(i) {
                Ok(u) => v.visit_u64(u),
                Err(_) => v.visit_u128(i as u128),
            },
            Some(i) => match i64::try_from(i) {
                Ok(n) => v.visit_i64(n),
                Err(_) => v.visit_i128(i),
            },
            None => self.invalid(&v),
        }
    }

    fn float<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.plain().and_then(resolve_float) {
            Some(f) => v.visit_f64(f),
            None => self.invalid(&v),
        }
    }
}

impl<'de, 'a> de::Deserializer<'de> for De<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => v.visit_unit(),
            Node::Bool(b) => v.visit_bool(*b),
            Node::Str(s) => v.visit_str(s),
            Node::Num(s) | Node::Plain(s) => {
                if let Some(b) = resolve_bool(s).filter(|_| matches!(self.0, Node::Plain(_))) {
                    v.visit_bool(b)
                } else if resolve_int(s).is_some() {
                    self.int(v)
                } else if resolve_float(s).is_some() {
                    self.float(v)
                } else {
                    v.visit_str(s)
                }
            }
            Node::Seq(items) => v.visit_seq(Seq { items, i: 0 }),
            Node::Map(pairs) => v.visit_map(Map {
                pairs,
                i: 0,
                key: "",
            }),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Bool(b) => v.visit_bool(*b),
            Node::Plain(s) => match resolve_bool(s) {
                Some(b) => v.visit_bool(b),
                None => self.invalid(&v),
            },
            _ => self.invalid(&v),
        }
    }

    numbers! {
        int: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128;
        float: deserialize_f32 deserialize_f64
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Str(s) | Node::Plain(s) | Node::Num(s) => v.visit_str(s),
            Node::Bool(b) => v.visit_str(if *b { "true" } else { "false" }),
            Node::Null => v.visit_str(""),
            _ => self.invalid(&v),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_any(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_any(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => v.visit_unit(),
            _ => self.invalid(&v),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Seq(items) => v.visit_seq(Seq { items, i: 0 }),
            Node::Null => v.visit_seq(Seq { items: &[], i: 0 }),
            _ => self.invalid(&v),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Map(pairs) => v.visit_map(Map {
                pairs,
                i: 0,
                key: "",
            }),
            Node::Null => v.visit_map(Map {
                pairs: &[],
                i: 0,
                key: "",
            }),
            _ => self.invalid(&v),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Node::Str(s) | Node::Plain(s) => v.visit_enum(s.as_str().into_deserializer()),
            Node::Map(pairs) if pairs.len() == 1 => v.visit_enum(Enum(&pairs[0])),
            _ => self.invalid(&v),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

struct Seq<'a> {
    items: &'a [Node],
    i: usize,
}

impl<'de, 'a> de::SeqAccess<'de> for Seq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(n) = self.items.get(self.i) else {
            return Ok(None);
        };
        self.i += 1;
        seed.deserialize(De(n))
            .map(Some)
            .map_err(|e| Error(format!("item {}: {e}", self.i)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.i)
    }
}

struct Map<'a> {
    pairs: &'a [(String, Node)],
    i: usize,
    key: &'a str,
}

impl<'de, 'a> de::MapAccess<'de> for Map<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((k, _)) = self.pairs.get(self.i) else {
            return Ok(None);
        };
        self.key = k;
        seed.deserialize(k.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (_, v) = &self.pairs[self.i];
        self.i += 1;
        seed.deserialize(De(v))
            .map_err(|e| Error(format!("{}: {e}", self.key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.pairs.len() - self.i)
    }
}

/// `{variant: value}`.
struct Enum<'a>(&'a (String, Node));

impl<'de, 'a> de::EnumAccess<'de> for Enum<'a> {
    type Error = Error;
    type Variant = De<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, De<'a>), Error> {
        let v = seed.deserialize(self.0 .0.as_str().into_deserializer())?;
        Ok((v, De(&self.0 .1)))
    }
}

impl<'de, 'a> de::VariantAccess<'de> for De<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, v)
    }
}
