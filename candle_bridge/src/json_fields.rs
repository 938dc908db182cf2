//! Typed access to the fields of a JSON config, with one-line errors that name the file and
//! the field. Serde's derive would report "missing field" without the file, and type errors by
//! line/column only, which is not enough to fix a config by hand.

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A JSON object read from `file`, reached through `prefix` (e.g. "seanet.") for nested objects.
pub(crate) struct Fields<'a> {
    file: &'a Path,
    prefix: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(crate) fn root(file: &'a Path, value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Self {
                file,
                prefix: String::new(),
                map,
            }),
            _ => Err(anyhow!(
                "{}: expected a JSON object at the top level",
                file.display()
            )),
        }
    }

    /// The error for `key` of this object: "<file>: field `<path>`: <msg>".
    pub(crate) fn error(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: field `{}{key}`: {msg}",
            self.file.display(),
            self.prefix
        )
    }

    /// The value of `key`, treating JSON null like an absent key.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| self.error(key, "missing"))
    }

    pub(crate) fn object(&self, key: &str) -> Result<Fields<'a>> {
        match self.required(key)? {
            Value::Object(map) => Ok(Fields {
                file: self.file,
                prefix: format!("{}{key}.", self.prefix),
                map,
            }),
            v => Err(self.error(key, format!("expected an object, got {v}"))),
        }
    }

    pub(crate) fn opt_object(&self, key: &str) -> Result<Option<Fields<'a>>> {
        self.get(key).map(|_| self.object(key)).transpose()
    }

    /// Tells an empty `{}` from a populated object.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A non-negative whole number. Floats with no fractional part are accepted because
    /// Python writes some integer fields as floats (e.g. `"max_period": 100000.0`).
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        as_usize(v)
            .ok_or_else(|| self.error(key, format!("expected a non-negative integer, got {v}")))
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        self.get(key).map_or(Ok(default), |_| self.usize(key))
    }

    pub(crate) fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.required(key)?;
        let items = v
            .as_array()
            .and_then(|a| a.iter().map(as_usize).collect::<Option<Vec<_>>>());
        items.ok_or_else(|| {
            self.error(
                key,
                format!("expected a list of non-negative integers, got {v}"),
            )
        })
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.as_f64()
            .ok_or_else(|| self.error(key, format!("expected a number, got {v}")))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64(key)).transpose()
    }

    pub(crate) fn str(&self, key: &str) -> Result<&'a str> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| self.error(key, format!("expected a string, got {v}")))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key).map(|_| self.str(key)).transpose()
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(key, format!("expected true or false, got {v}"))),
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= usize::MAX as f64).then_some(f as usize)
}
