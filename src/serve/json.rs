//! The predict request and response bodies (TensorFlow Serving's JSON forms): parsing a
//! body into rows of f32, and writing output rows back as nested lists.
//!
//! Shapes: the model has one input, `x`, whose instance shape comes from the model (e.g.
//! `[1, 28, 28]`). An instance is accepted when it is a rectangular nested list of numbers
//! with as many numbers as that shape holds, whatever its nesting: an MNIST model takes
//! `[784 numbers]`, `[[28 numbers] x 28]` or `[[[28 numbers] x 28]]` alike.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;
use std::fmt;

/// The input tensor's name in the signature.
pub(crate) const INPUT_NAME: &str = "x";
/// The output tensor's name in the signature.
pub(crate) const OUTPUT_NAME: &str = "logits";
/// The only signature a Kiln model has.
pub(crate) const SIGNATURE: &str = "serving_default";

/// Which form the request used (the response answers in the same form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `{"instances": [...]}` → `{"predictions": [...]}`
    Row,
    /// `{"inputs": ...}` → `{"outputs": ...}`
    Columnar,
}

/// A parsed predict request: `rows` instances, flattened row-major into `data`.
#[derive(Debug)]
pub(crate) struct PredictInput {
    pub form: Form,
    pub rows: usize,
    pub data: Vec<f32>,
}

/// Parses a predict body for a model whose instances have `instance_shape`, streaming the
/// numbers straight into f32s (4 bytes each, whatever the body's size). The error is the
/// message of a 400 answer.
pub(crate) fn parse_predict(body: &[u8], instance_shape: &[usize]) -> Result<PredictInput, String> {
    let per_row: usize = instance_shape.iter().product();
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = BodySeed { instance_shape, per_row }.deserialize(&mut de).and_then(|b| de.end().map(|_| b));
    let b = parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("the body is not valid JSON: {e}"),
    })?;
    match b.signature {
        None => {}
        Some(Value::String(s)) if s == SIGNATURE => {}
        Some(Value::String(s)) => {
            return Err(format!("signature_name \"{s}\" not found: this model has only \"{SIGNATURE}\""))
        }
        Some(other) => return Err(format!("signature_name must be a string, found {}", kind(&other))),
    }
    match (b.instances, b.inputs) {
        (Some(_), Some(_)) => Err("the body has both \"instances\" and \"inputs\": send exactly one".into()),
        (None, None) => Err("the body has neither \"instances\" (row form) nor \"inputs\" (columnar form)".into()),
        (Some((rows, data)), None) => Ok(PredictInput { form: Form::Row, rows, data }),
        (None, Some((shape, data))) => {
            let rows = shape.first().copied().unwrap_or(0);
            let each: usize = shape.iter().skip(1).product();
            if shape.len() < 2 || rows == 0 || each != per_row {
                return Err(format!(
                    "\"inputs\" has shape {shape:?} but input \"{INPUT_NAME}\" takes [batch] + {instance_shape:?} \
                     (a batch of instances of {per_row} numbers each)"
                ));
            }
            Ok(PredictInput { form: Form::Columnar, rows, data })
        }
    }
}

/// What the body held, before the checks that need all of it.
#[derive(Default)]
struct Body {
    signature: Option<Value>,
    /// Row form: (rows, numbers), each instance already checked.
    instances: Option<(usize, Vec<f32>)>,
    /// Columnar form: (shape, numbers).
    inputs: Option<(Vec<usize>, Vec<f32>)>,
}

struct BodySeed<'s> {
    instance_shape: &'s [usize],
    per_row: usize,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Body;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Body;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the body to be a JSON object with \"instances\" or \"inputs\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut b = Body::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "signature_name" => b.signature = Some(map.next_value()?),
                "instances" if b.instances.is_some() => return Err(de::Error::custom("\"instances\" appears twice")),
                "inputs" if b.inputs.is_some() => return Err(de::Error::custom("\"inputs\" appears twice")),
                "instances" => b.instances = Some(map.next_value_seed(InstancesSeed(&self))?),
                "inputs" => {
                    let mut data = Vec::new();
                    let mut c = Collector::new(&mut data, "\"inputs\": ".into());
                    map.next_value_seed(Named(&mut c))?;
                    let shape = c.shape();
                    b.inputs = Some((shape, data));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(b)
    }
}

/// `"instances": [instance, ...]`, each checked against the input's size.
struct InstancesSeed<'b, 's>(&'b BodySeed<'s>);

impl<'de> DeserializeSeed<'de> for InstancesSeed<'_, '_> {
    type Value = (usize, Vec<f32>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed<'_, '_> {
    type Value = (usize, Vec<f32>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of instances for \"instances\"")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let per_row = self.0.per_row;
        let mut data = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(1024) * per_row);
        let mut rows = 0;
        loop {
            let before = data.len();
            let mut c = Collector::new(&mut data, format!("instance {rows}: "));
            if seq.next_element_seed(Named(&mut c))?.is_none() {
                break;
            }
            let shape = c.shape();
            let n = data.len() - before;
            if n != per_row {
                return Err(de::Error::custom(format!(
                    "instance {rows} has shape {shape:?} ({n} numbers) but input \"{INPUT_NAME}\" takes {:?} ({per_row} numbers)",
                    self.0.instance_shape
                )));
            }
            rows += 1;
        }
        if rows == 0 {
            return Err(de::Error::custom("\"instances\" is empty"));
        }
        Ok((rows, data))
    }
}

/// Collects one tensor's numbers and checks that its nested lists are rectangular.
struct Collector<'d> {
    data: &'d mut Vec<f32>,
    /// The length of the lists at each depth, once seen.
    dims: Vec<Option<usize>>,
    /// The depth of the numbers, once seen.
    leaf: Option<usize>,
    /// What the errors are about ("instance 3: ").
    ctx: String,
}

impl<'d> Collector<'d> {
    fn new(data: &'d mut Vec<f32>, ctx: String) -> Collector<'d> {
        Collector { data, dims: Vec::new(), leaf: None, ctx }
    }

    fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|d| d.unwrap_or(0)).collect()
    }

    fn error<E: de::Error>(&self, msg: impl fmt::Display) -> E {
        E::custom(format!("{}{msg}", self.ctx))
    }

    fn number<E: de::Error>(&mut self, depth: usize, v: f64) -> Result<(), E> {
        match self.leaf {
            Some(l) if l != depth => return Err(self.error(format!("ragged nested list: a number at depth {depth}"))),
            Some(_) => {}
            None if self.dims.len() > depth => {
                return Err(self.error(format!("ragged nested list: a number at depth {depth} beside lists")))
            }
            None => self.leaf = Some(depth),
        }
        let x = v as f32;
        if !x.is_finite() {
            return Err(self.error(format!("the number {v:e} is out of the range of DT_FLOAT")));
        }
        self.data.push(x);
        Ok(())
    }

    fn not_a_number<E: de::Error>(&self, found: &str) -> E {
        self.error(format!("input \"{INPUT_NAME}\" is DT_FLOAT (numbers), found {found}"))
    }
}

/// A tensor, or `{"x": tensor}` (the named form of a single-input model).
struct Named<'c, 'd>(&'c mut Collector<'d>);

impl<'de> DeserializeSeed<'de> for Named<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Named<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "numbers, nested lists of numbers, or {{\"{INPUT_NAME}\": ...}}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key::<String>()? {
            Some(k) if k == INPUT_NAME => map.next_value_seed(Level { c: &mut *self.0, depth: 0 })?,
            Some(k) => return Err(self.0.error(format!("the input is named \"{INPUT_NAME}\", found \"{k}\""))),
            None => return Err(self.0.error(format!("an empty object: expected {{\"{INPUT_NAME}\": ...}}"))),
        }
        match map.next_key::<String>()? {
            None => Ok(()),
            Some(k) => Err(self.0.error(format!("the model has one input, \"{INPUT_NAME}\"; found also \"{k}\""))),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Level { c: self.0, depth: 0 }.visit_seq(seq)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.number(0, v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.number(0, v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.number(0, v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Level { c: self.0, depth: 0 }.visit_str(v)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.0.not_a_number("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.not_a_number("null"))
    }
}

/// One value at `depth` of a nested list.
struct Level<'c, 'd> {
    c: &'c mut Collector<'d>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "numbers or nested lists of numbers (input \"{INPUT_NAME}\" is DT_FLOAT)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if self.c.leaf.is_some_and(|l| depth >= l) {
            return Err(self.c.error(format!("ragged nested list: a list at depth {depth} beside numbers")));
        }
        if self.c.dims.len() <= depth {
            self.c.dims.resize(depth + 1, None);
        }
        let mut n = 0;
        while seq.next_element_seed(Level { c: &mut *self.c, depth: depth + 1 })?.is_some() {
            n += 1;
        }
        match self.c.dims[depth] {
            None => self.c.dims[depth] = Some(n),
            Some(m) if m != n => {
                return Err(self.c.error(format!("ragged nested list: lists of {m} and of {n} at depth {depth}")))
            }
            Some(_) => {}
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.c.number(self.depth, v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.c.number(self.depth, v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.c.number(self.depth, v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let v: String = v.chars().take(40).collect();
        Err(self.c.not_a_number(&format!("the string \"{v}\"")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.c.not_a_number("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.c.not_a_number("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.c.not_a_number("an object"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The response body: `rows` rows of `out_shape` each, from `data`, as
/// `{"predictions": [...]}` (row form) or `{"outputs": [...]}` (columnar form).
pub(crate) fn predict_response(form: Form, data: &[f32], rows: usize, out_shape: &[usize]) -> Result<Vec<u8>, String> {
    let key = match form {
        Form::Row => "predictions",
        Form::Columnar => "outputs",
    };
    let mut shape = Vec::with_capacity(out_shape.len() + 1);
    shape.push(rows);
    shape.extend_from_slice(out_shape);
    if shape.iter().product::<usize>() != data.len() {
        return Err(format!("the model returned {} numbers for output shape {shape:?}", data.len()));
    }
    let mut body = Vec::with_capacity(data.len() * 12 + 32);
    body.extend_from_slice(format!("{{\"{key}\":").as_bytes());
    serde_json::to_writer(&mut body, &Nested { data, shape: &shape }).map_err(|e| e.to_string())?;
    body.push(b'}');
    Ok(body)
}

/// A row-major tensor serialised as nested lists (f32s written in their shortest form).
struct Nested<'a> {
    data: &'a [f32],
    shape: &'a [usize],
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((&n, inner)) = self.shape.split_first() else {
            return s.serialize_f32(self.data.first().copied().unwrap_or(0.0));
        };
        let step: usize = inner.iter().product();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Nested { data: &self.data[i * step..(i + 1) * step], shape: inner })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_of_any_nesting_with_the_right_count() {
        let flat: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let body = serde_json::json!({"instances": [flat, [[0, 1, 2], [3, 4, 5]], {"x": [[[0, 1, 2], [3, 4, 5]]]}]});
        let p = parse_predict(body.to_string().as_bytes(), &[1, 2, 3]).unwrap();
        assert_eq!((p.form, p.rows), (Form::Row, 3));
        assert_eq!(p.data, [flat.clone(), flat.clone(), flat].concat());
    }

    #[test]
    fn columnar_needs_a_batch_dimension() {
        let p = parse_predict(br#"{"inputs": [[1, 2], [3, 4.5]]}"#, &[2]).unwrap();
        assert_eq!((p.form, p.rows, p.data), (Form::Columnar, 2, vec![1.0, 2.0, 3.0, 4.5]));
        assert!(parse_predict(br#"{"inputs": [1, 2]}"#, &[2]).unwrap_err().contains("shape [2]"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |b: &str| parse_predict(b.as_bytes(), &[2]).unwrap_err();
        assert!(e("{").contains("not valid JSON"));
        assert!(e("[1]").contains("JSON object"));
        assert!(e(r#"{"instances": [[1, "a"]]}"#).contains("string \"a\""));
        assert!(e(r#"{"instances": [[[1], [2, 3]]]}"#).contains("ragged"));
        assert!(e(r#"{"instances": [[1, 2, 3]]}"#).contains("instance 0 has shape [3]"));
        assert!(e(r#"{"instances": [[1, 2]], "inputs": [[1, 2]]}"#).contains("both"));
        assert!(e(r#"{"signature_name": "serving_default"}"#).contains("neither"));
        assert!(e(r#"{"signature_name": "other", "instances": [[1, 2]]}"#).contains("\"other\" not found"));
        assert!(e(r#"{"instances": [[1, null]]}"#).contains("found null"));
        assert!(e(r#"{"instances": [[1, 1e300]]}"#).contains("out of the range"));
        assert!(e(r#"{"instances": []}"#).contains("empty"));
        assert!(e(r#"{"instances": {"x": 1}}"#).contains("a list of instances"));
        assert!(e(r#"{"instances": [[[1, 2]], [[3], 4]]}"#).contains("instance 1: ragged"));
        assert!(e(r#"{"instances": [[[], 1]]}"#).contains("ragged"));
        assert!(e(r#"{"instances": [{"x": [1, 2], "y": 3}]}"#).contains("found also \"y\""));
        assert!(e(r#"{"instances": [[1, 2]], "instances": [[1, 2]]}"#).contains("twice"));
        assert!(e(r#"{"instances": [[1, 2]]} trailing"#).contains("not valid JSON"));
    }

    #[test]
    fn response_nests_rows() {
        let b = predict_response(Form::Row, &[0.1, 2.0, -3.5, 4.0], 2, &[2]).unwrap();
        assert_eq!(std::str::from_utf8(&b).unwrap(), r#"{"predictions":[[0.1,2.0],[-3.5,4.0]]}"#);
        let b = predict_response(Form::Columnar, &[1.0, 2.0], 2, &[]).unwrap();
        assert_eq!(std::str::from_utf8(&b).unwrap(), r#"{"outputs":[1.0,2.0]}"#);
    }
}
