//! The body of `dit serve`'s `POST /v1/images/generations` (OpenAI's images API with
//! Z-Image's sampling fields), read field by field so that every error names the field at
//! fault. The server turns a [`BodyError`] into OpenAI's error object.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why a request body is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A body the client must change (HTTP 400), naming the field at fault when there is
    /// one.
    #[error("{message}")]
    Invalid {
        param: Option<String>,
        message: String,
    },
    /// `model` names another model than the server's (HTTP 404).
    #[error("the model `{0}` does not exist: this server runs one model")]
    ModelNotFound(String),
}

impl BodyError {
    fn invalid(param: Option<&str>, message: impl Into<String>) -> BodyError {
        BodyError::Invalid {
            param: param.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The request field at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            BodyError::Invalid { param, .. } => param.as_deref(),
            BodyError::ModelNotFound(_) => Some("model"),
        }
    }
}

/// Images one request may ask for.
pub const MAX_IMAGES: usize = 4;

/// What the server accepts, from its flags and its model.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The loaded model's id: a request's `model` must be it.
    pub model: String,
    /// Largest width or height, in pixels.
    pub max_size: i32,
    pub max_steps: usize,
    /// The side drawn when `size` is absent.
    pub default_size: i32,
    /// The steps run when `steps` is absent.
    pub default_steps: usize,
}

/// A valid generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: i32,
    pub height: i32,
    /// Pictures drawn one after another, the k-th from `seed + k`.
    pub n: usize,
    pub seed: u64,
    pub steps: usize,
    pub guidance_scale: f32,
    pub stream: bool,
}

/// Fields a body may have. `user` is OpenAI's end-user tag, accepted and ignored.
const FIELDS: [&str; 11] = [
    "prompt",
    "negative_prompt",
    "model",
    "size",
    "n",
    "seed",
    "steps",
    "guidance_scale",
    "response_format",
    "stream",
    "user",
];

/// Parses and checks a request body. `random_seed` gives the seed of a request without one.
pub fn parse(
    body: &[u8],
    limits: &Limits,
    random_seed: impl FnOnce() -> u64,
) -> Result<Generation, BodyError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(BodyError::invalid(None, "the body must be a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(BodyError::invalid(
            Some(unknown),
            format!(
                "unknown field `{unknown}`; the fields are {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let prompt: String = field(&fields, "prompt")?
        .ok_or_else(|| BodyError::invalid(Some("prompt"), "`prompt` is required"))?;
    if let Some(model) = field::<String>(&fields, "model")? {
        if model != limits.model {
            return Err(BodyError::ModelNotFound(model));
        }
    }
    match field::<String>(&fields, "response_format")?.as_deref() {
        None | Some("b64_json") => {}
        Some("url") => {
            return Err(BodyError::invalid(
                Some("response_format"),
                "`response_format` \"url\" is not supported: this server keeps no files; \
                 use \"b64_json\"",
            ))
        }
        Some(other) => {
            return Err(BodyError::invalid(
                Some("response_format"),
                format!("`response_format` must be \"b64_json\", found {other:?}"),
            ))
        }
    }
    field::<String>(&fields, "user")?;
    let (width, height) = match field::<String>(&fields, "size")? {
        Some(size) => parse_size(&size, limits)?,
        None => (limits.default_size, limits.default_size),
    };
    let n = field::<usize>(&fields, "n")?.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(BodyError::invalid(
            Some("n"),
            format!("`n` must be between 1 and {MAX_IMAGES}, found {n}"),
        ));
    }
    let steps = field::<usize>(&fields, "steps")?.unwrap_or(limits.default_steps);
    if !(1..=limits.max_steps).contains(&steps) {
        return Err(BodyError::invalid(
            Some("steps"),
            format!(
                "`steps` must be between 1 and {}, found {steps}",
                limits.max_steps
            ),
        ));
    }
    let guidance_scale = field::<f32>(&fields, "guidance_scale")?.unwrap_or(0.0);
    if !(guidance_scale.is_finite() && guidance_scale >= 0.0) {
        return Err(BodyError::invalid(
            Some("guidance_scale"),
            format!("`guidance_scale` must be a non-negative number, found {guidance_scale}"),
        ));
    }
    Ok(Generation {
        prompt,
        negative_prompt: field(&fields, "negative_prompt")?.unwrap_or_default(),
        width,
        height,
        n,
        seed: match field::<u64>(&fields, "seed")? {
            Some(seed) => seed,
            None => random_seed(),
        },
        steps,
        guidance_scale,
        stream: field(&fields, "stream")?.unwrap_or(false),
    })
}

/// Field `name` as a `T`; absent and `null` are `None`.
fn field<T: DeserializeOwned>(
    fields: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, BodyError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| BodyError::invalid(Some(name), format!("`{name}`: {e}"))),
    }
}

/// `"WxH"`, each side a multiple of 16 (the VAE's 8 times the transformer's 2x2
/// patches) and at most the server's limit.
fn parse_size(size: &str, limits: &Limits) -> Result<(i32, i32), BodyError> {
    let invalid = |why: String| BodyError::invalid(Some("size"), format!("`size` {size:?}: {why}"));
    let side = |s: &str| {
        s.parse::<i32>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((side(w)?, side(h)?)))
        .ok_or_else(|| invalid("expected WIDTHxHEIGHT, such as \"1024x1024\"".into()))?;
    for side in [w, h] {
        crate::sampler::check_side(side).map_err(|e| invalid(e.to_string()))?;
    }
    if w > limits.max_size || h > limits.max_size {
        return Err(invalid(format!(
            "this server draws at most {0}x{0} pixels",
            limits.max_size
        )));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            model: "tiny".into(),
            max_size: 512,
            max_steps: 50,
            default_size: 256,
            default_steps: 9,
        }
    }

    fn parse_str(body: &str) -> Result<Generation, BodyError> {
        parse(body.as_bytes(), &limits(), || 7)
    }

    fn param_of(body: &str) -> Option<String> {
        parse_str(body).unwrap_err().param().map(str::to_owned)
    }

    #[test]
    fn defaults_fill_what_is_absent() {
        let g = parse_str(r#"{"prompt": "a fox"}"#).unwrap();
        assert_eq!(
            g,
            Generation {
                prompt: "a fox".into(),
                negative_prompt: String::new(),
                width: 256,
                height: 256,
                n: 1,
                seed: 7,
                steps: 9,
                guidance_scale: 0.0,
                stream: false,
            }
        );
        let g = parse_str(
            r#"{"prompt": "a fox", "size": "64x32", "n": 2, "seed": 3, "steps": 4,
                "guidance_scale": 1.5, "stream": true, "model": "tiny", "seed": 5,
                "response_format": "b64_json", "negative_prompt": "blur", "user": "u1"}"#,
        )
        .unwrap();
        assert_eq!((g.width, g.height, g.n, g.seed, g.steps), (64, 32, 2, 5, 4));
        assert_eq!((g.guidance_scale, g.stream), (1.5, true));
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (r#"{"prompt": "a", "sise": "64x64"}"#, "sise"),
            (r#"{}"#, "prompt"),
            (r#"{"prompt": 3}"#, "prompt"),
            (r#"{"prompt": "a", "steps": "8"}"#, "steps"),
            (r#"{"prompt": "a", "steps": -1}"#, "steps"),
            (r#"{"prompt": "a", "steps": 51}"#, "steps"),
            (r#"{"prompt": "a", "n": 5}"#, "n"),
            (r#"{"prompt": "a", "n": 0}"#, "n"),
            (r#"{"prompt": "a", "seed": 1.5}"#, "seed"),
            (r#"{"prompt": "a", "stream": "yes"}"#, "stream"),
            (r#"{"prompt": "a", "guidance_scale": -1}"#, "guidance_scale"),
            (
                r#"{"prompt": "a", "response_format": "url"}"#,
                "response_format",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body).as_deref(), Some(param), "{body}");
        }
        for size in [
            "64x60", "0x64", "64", "64x", "x64", "+64x64", "64x64x64", "1024x64", " 64x64",
        ] {
            let body = format!(r#"{{"prompt": "a", "size": "{size}"}}"#);
            assert_eq!(param_of(&body).as_deref(), Some("size"), "{size}");
        }
        let wrong_model = parse_str(r#"{"prompt": "a", "model": "dall-e-3"}"#).unwrap_err();
        assert_eq!(wrong_model, BodyError::ModelNotFound("dall-e-3".into()));
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        for body in [
            "",
            "{",
            "[1]",
            "\"prompt\"",
            "null",
            "{\"prompt\": \"a\"} x",
        ] {
            let error = parse_str(body).unwrap_err();
            assert!(
                matches!(error, BodyError::Invalid { param: None, .. }),
                "{body}"
            );
        }
    }
}
