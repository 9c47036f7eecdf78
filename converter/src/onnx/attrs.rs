//! Typed access to node attributes, with errors naming the attribute.

use super::proto::{attr_type as at, AttributeProto, NodeProto, TensorProto};

/// The attributes of one node.
pub struct Attrs<'a>(pub &'a NodeProto);

fn type_name(t: i32) -> &'static str {
    match t {
        at::FLOAT => "FLOAT",
        at::INT => "INT",
        at::STRING => "STRING",
        at::TENSOR => "TENSOR",
        at::GRAPH => "GRAPH",
        at::FLOATS => "FLOATS",
        at::INTS => "INTS",
        at::STRINGS => "STRINGS",
        at::TENSORS => "TENSORS",
        at::GRAPHS => "GRAPHS",
        _ => "UNDEFINED/other",
    }
}

impl<'a> Attrs<'a> {
    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    fn typed(&self, name: &str, want: i32) -> Result<Option<&'a AttributeProto>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type == want || a.r#type == at::UNDEFINED => Ok(Some(a)),
            Some(a) => Err(format!(
                "attribute \"{name}\" has type {}, expected {}",
                type_name(a.r#type),
                type_name(want)
            )),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, String> {
        Ok(self.typed(name, at::INT)?.map_or(default, |a| a.i))
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, String> {
        Ok(self.typed(name, at::INT)?.map(|a| a.i))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, String> {
        Ok(self.typed(name, at::FLOAT)?.map_or(default, |a| a.f))
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f32>, String> {
        Ok(self.typed(name, at::FLOAT)?.map(|a| a.f))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, String> {
        Ok(self.typed(name, at::INTS)?.map(|a| a.ints.clone()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, String> {
        Ok(self.typed(name, at::FLOATS)?.map(|a| a.floats.clone()))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .typed(name, at::STRING)?
            .map(|a| String::from_utf8_lossy(&a.s).into_owned()))
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, String> {
        Ok(self.typed(name, at::TENSOR)?.and_then(|a| a.t.as_ref()))
    }

    /// Non-negative ints of exactly `len` values (default if absent), with
    /// `min` as the smallest allowed value.
    pub fn dims(
        &self,
        name: &str,
        len: usize,
        default: i64,
        min: i64,
    ) -> Result<Vec<usize>, String> {
        let v = self.ints(name)?.unwrap_or_else(|| vec![default; len]);
        if v.len() != len {
            return Err(format!(
                "attribute \"{name}\" = {v:?} is not supported: expected {len} values"
            ));
        }
        if let Some(bad) = v.iter().find(|&&x| x < min || x > (1 << 30)) {
            return Err(format!(
                "attribute \"{name}\" = {v:?} is not supported: value {bad} must be between {min} and 2^30"
            ));
        }
        Ok(v.into_iter().map(|x| x as usize).collect())
    }
}
