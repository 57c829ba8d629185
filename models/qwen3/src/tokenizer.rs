//! The tokenizer: a `tokenizer.json` read by the `tokenizers` crate (what transformers'
//! fast tokenizers run), the named special tokens of `tokenizer_config.json`, and its
//! chat template; and the prompt ids of Z-Image's pipeline.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use minijinja::Value as TemplateValue;
use serde_json::Value;
use tokenizers::{PostProcessor, TruncationDirection};

use crate::chat_template::{ChatTemplate, Message};
use crate::{Qwen3Error, Result};

/// The pipeline's default `max_sequence_length`.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// transformers' named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`): the chat template
/// sees those that are set.
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The token ids of one prompt as the pipeline keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptIds {
    /// The real tokens, at most `max_length`.
    pub ids: Vec<i32>,
    /// How many tokens truncation cut off the end.
    pub dropped: usize,
}

/// A tokenizer with its special tokens and chat template. `Send + Sync`: encoding takes
/// `&self`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    /// The named special tokens that are set, as `(name, token)`.
    special_tokens: Vec<(&'static str, String)>,
    /// `tokenizer.json`'s path: what encoding errors name.
    origin: PathBuf,
    /// Where a chat template would have come from: what "no template" names.
    config_origin: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.special_tokens)
            .field("template", &self.template)
            .finish()
    }
}

/// The shipped tokenizer's files, by name.
const BUILTIN_FILES: [(&str, &str); 2] = [
    (
        "tokenizer.json",
        include_str!("../tokenizer/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_str!("../tokenizer/tokenizer_config.json"),
    ),
];

/// Writes the shipped tokenizer ([`Tokenizer::builtin`]) into `dir` (created if missing),
/// as a pipeline folder's `tokenizer/` holds it.
pub fn write_builtin(dir: &Path) -> Result<()> {
    let io = |path: PathBuf| move |source| Qwen3Error::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    for (name, text) in BUILTIN_FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(path.clone()))?;
    }
    Ok(())
}

/// The files a tokenizer is made of, read.
struct Files {
    json: (PathBuf, String),
    config: (PathBuf, Option<String>),
    jinja: Option<(PathBuf, String)>,
}

impl Tokenizer {
    /// Reads `tokenizer.json`, `tokenizer_config.json` (if present) and
    /// `chat_template.jinja` (if present: it takes priority over the config's
    /// `chat_template`, as in transformers) from a tokenizer directory.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let optional = |name: &str| -> Result<(PathBuf, Option<String>)> {
            let path = dir.join(name);
            let text = if path.is_file() {
                Some(crate::read_text(&path)?)
            } else {
                None
            };
            Ok((path, text))
        };
        let json = crate::read_text(&dir.join("tokenizer.json"))?;
        let (_, jinja) = optional("chat_template.jinja")?;
        let (_, config) = optional("tokenizer_config.json")?;
        Tokenizer::from_texts(dir, json, config, jinja)
    }

    /// The tokenizer of `dir` from its files' contents, as [`from_dir`](Self::from_dir)
    /// reads them: `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`
    /// (the last two optional). Errors name the files in `dir`.
    pub fn from_texts(
        dir: &Path,
        json: String,
        config: Option<String>,
        jinja: Option<String>,
    ) -> Result<Tokenizer> {
        Tokenizer::from_files(Files {
            json: (dir.join("tokenizer.json"), json),
            config: (dir.join("tokenizer_config.json"), config),
            jinja: jinja.map(|text| (dir.join("chat_template.jinja"), text)),
        })
    }

    /// The small tokenizer shipped with this crate (`tokenizer/`): a byte-level BPE of
    /// 600 tokens built the way Qwen's is, Qwen3's added tokens and its chat template.
    /// It tokenizes any text; the built-in models have its vocabulary.
    pub fn builtin() -> Result<Tokenizer> {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tokenizer"));
        let [(json_name, json), (config_name, config)] = BUILTIN_FILES;
        Tokenizer::from_files(Files {
            json: (dir.join(json_name), json.into()),
            config: (dir.join(config_name), Some(config.into())),
            jinja: None,
        })
    }

    fn from_files(files: Files) -> Result<Tokenizer> {
        let (origin, json) = files.json;
        let bad = |path: &Path, message: String| Qwen3Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        // Syntax first: `tokenizers` 0.22 panics on a syntax error inside `"decoder"`
        // (found by fuzzing) instead of returning it.
        serde_json::from_str::<serde::de::IgnoredAny>(&json)
            .map_err(|e| bad(&origin, format!("not JSON: {}", crate::one_line(e))))?;
        let mut inner =
            tokenizers::Tokenizer::from_str(&json).map_err(|e| bad(&origin, crate::one_line(e)))?;
        // transformers turns off what tokenizer.json may set unless a call asks for it
        // (`set_truncation_and_padding`); `prompt_ids` truncates by itself.
        if let Some(processor) = inner.get_post_processor() {
            let processor =
                serde_json::to_value(processor).map_err(|e| bad(&origin, e.to_string()))?;
            check_templates(&processor).map_err(|m| bad(&origin, m))?;
        }
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| bad(&origin, crate::one_line(e)))?;

        let (config_origin, config) = files.config;
        let config: Value = match config {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| bad(&config_origin, crate::one_line(e)))?
            }
            None => Value::Object(Default::default()),
        };
        if !config.is_object() {
            return Err(bad(&config_origin, "not a JSON object".into()));
        }
        let special_tokens = special_tokens(&config).map_err(|m| bad(&config_origin, m))?;
        let template = match files.jinja {
            Some((path, text)) => Some(ChatTemplate::new(text, &path)?),
            None => config_template(&config)
                .map_err(|m| bad(&config_origin, m))?
                .map(|text| ChatTemplate::new(text, &config_origin))
                .transpose()?,
        };
        Ok(Tokenizer {
            inner,
            template,
            special_tokens,
            origin,
            config_origin,
        })
    }

    /// The chat template applied to `messages`, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...,
    /// enable_thinking=...)` renders it.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(Qwen3Error::Template {
                path: self.config_origin.clone(),
                message: "the tokenizer has no chat template (no chat_template.jinja, no chat_template here)".into(),
            });
        };
        if messages.is_empty() {
            return Err(Qwen3Error::Input(
                "a chat template needs at least one message".into(),
            ));
        }
        let mut variables: Vec<(&str, TemplateValue)> = self
            .special_tokens
            .iter()
            .map(|(name, token)| (*name, TemplateValue::from(token.as_str())))
            .collect();
        variables.push(("enable_thinking", TemplateValue::from(enable_thinking)));
        template.render(messages, add_generation_prompt, &variables)
    }

    /// The ids of `text`, special tokens written in it included (`<|im_start|>` is one
    /// token), no others added: `tokenizer(text, add_special_tokens=False)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(text)?.get_ids().to_vec())
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.inner.encode(text, false).map_err(|e| self.failure(e))
    }

    fn failure(&self, e: impl std::fmt::Display) -> Qwen3Error {
        Qwen3Error::Tokenizer {
            path: self.origin.clone(),
            message: crate::one_line(e),
        }
    }

    /// The text of `ids`; `skip_special_tokens` leaves special tokens out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.failure(e))
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (a special or added token, or one of the model's vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The named special token `name` (`"eos_token"`, `"pad_token"`, ...), if set.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, token)| token.as_str())
    }

    /// The padding token's id, if the tokenizer has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.token_to_id(self.special_token("pad_token")?)
    }

    /// The end-of-sequence token's id, if the tokenizer has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.token_to_id(self.special_token("eos_token")?)
    }

    /// A prompt's ids exactly as diffusers' `ZImagePipeline._encode_prompt` computes them:
    /// one user message through the chat template (`add_generation_prompt=True,
    /// enable_thinking=True`), tokenized with the tokenizer's special tokens
    /// (`add_special_tokens=True`, its post-processor's) and truncated on the right to
    /// `max_length` ([`MAX_SEQUENCE_LENGTH`] in the pipeline). Only the real tokens: the
    /// pipeline's padding is masked out.
    pub fn prompt_ids(&self, prompt: &str, max_length: usize) -> Result<PromptIds> {
        let text = self.apply_chat_template(&[Message::user(prompt)], true, true)?;
        self.truncated_ids(&text, max_length)
    }

    /// `tokenizer(text, truncation=True, max_length=max_length)`: the tokens the
    /// post-processor adds count against `max_length`, and the text's own tokens are cut
    /// to make room for them, as the `tokenizers` library truncates.
    fn truncated_ids(&self, text: &str, max_length: usize) -> Result<PromptIds> {
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let Some(room) = max_length.checked_sub(added) else {
            return Err(Qwen3Error::Input(format!(
                "max_length {max_length} leaves no room beside the {added} special tokens the tokenizer adds"
            )));
        };
        // Processed without special tokens, an encoding keeps its ids (processors only
        // add tokens and adjust offsets), so processing it again with them is what one
        // pass would give.
        let mut encoding = self.encoding(text)?;
        let dropped = encoding.len().saturating_sub(room);
        encoding.truncate(room, 0, TruncationDirection::Right);
        let encoding = self
            .inner
            .post_process(encoding, None, true)
            .map_err(|e| self.failure(e))?;
        let ids = encoding
            .get_ids()
            .iter()
            .map(|&id| i32::try_from(id))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|e| self.failure(format!("a token id does not fit in int32: {e}")))?;
        Ok(PromptIds { ids, dropped })
    }
}

/// Every special token that a `TemplateProcessing` post-processor (also one inside a
/// `Sequence`) puts in its templates must be one of its `special_tokens`, and its `single`
/// template must not use the second sequence. `tokenizers` 0.22
/// reads such a processor unchecked and panics when it applies it (found by fuzzing).
fn check_templates(processor: &Value) -> std::result::Result<(), String> {
    match processor.get("type").and_then(Value::as_str) {
        Some("Sequence") => processor
            .get("processors")
            .and_then(Value::as_array)
            .map_or(Ok(()), |list| list.iter().try_for_each(check_templates)),
        Some("TemplateProcessing") => {
            let defined = processor.get("special_tokens").and_then(Value::as_object);
            for template in ["single", "pair"] {
                let pieces = processor.get(template).and_then(Value::as_array);
                for piece in pieces.into_iter().flatten() {
                    let sequence = piece.pointer("/Sequence/id").and_then(Value::as_str);
                    if template == "single" && sequence == Some("B") {
                        return Err("the post-processor's `single` template uses the second \
                                    sequence ($B), which one text does not have"
                            .into());
                    }
                    let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) else {
                        continue;
                    };
                    if !defined.is_some_and(|d| d.contains_key(id)) {
                        return Err(format!(
                            "the post-processor's `{template}` template uses the special token \
                             `{id}`, which its `special_tokens` do not define"
                        ));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The named special tokens transformers would set: each key's string (or an
/// `AddedToken`'s `content`), `null` unsetting it, and for an absent key the default of
/// the tokenizer class (`Qwen2Tokenizer`: `<|endoftext|>` for unk, eos and pad).
fn special_tokens(config: &Value) -> std::result::Result<Vec<(&'static str, String)>, String> {
    let class = config.get("tokenizer_class").and_then(Value::as_str);
    let qwen2 = matches!(class, Some("Qwen2Tokenizer" | "Qwen2TokenizerFast"));
    let mut out = Vec::new();
    for name in SPECIAL_TOKEN_NAMES {
        let token = match config.get(name) {
            None if qwen2 && matches!(name, "unk_token" | "eos_token" | "pad_token") => {
                Some("<|endoftext|>".to_string())
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(added)) => match added.get("content") {
                Some(Value::String(s)) => Some(s.clone()),
                _ => return Err(format!("{name} is an object without a string `content`")),
            },
            Some(other) => return Err(format!("{name} must be a string, found {other}")),
        };
        if let Some(token) = token {
            out.push((name, token));
        }
    }
    Ok(out)
}

/// The config's `chat_template`: a string, or a list of `{name, template}` of which the
/// one named `default` is used.
fn config_template(config: &Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            for entry in named {
                let name = entry.get("name").and_then(Value::as_str);
                let template = entry.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(template)) => return Ok(Some(template.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => return Err(
                        "chat_template entries must be objects with string `name` and `template`"
                            .into(),
                    ),
                }
            }
            Err("chat_template lists named templates but none called \"default\"".into())
        }
        Some(other) => Err(format!(
            "chat_template must be a string or a list of named templates, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_follow_the_config_then_the_class_defaults() {
        let config = json!({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
            "unk_token": null, "bos_token": null, "mask_token": {"content": "<m>", "special": true}});
        let tokens = special_tokens(&config).unwrap();
        assert_eq!(
            tokens,
            vec![
                ("eos_token", "<|im_end|>".to_string()),
                ("pad_token", "<|endoftext|>".to_string()),
                ("mask_token", "<m>".to_string()),
            ]
        );
        // Another class has no defaults.
        assert!(special_tokens(&json!({"tokenizer_class": "Other"}))
            .unwrap()
            .is_empty());
        assert!(special_tokens(&json!({"pad_token": 3}))
            .unwrap_err()
            .contains("pad_token"));
    }

    #[test]
    fn named_templates_use_the_default_one() {
        let config = json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(config_template(&config).unwrap().as_deref(), Some("D"));
        let none = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
        assert!(config_template(&none).unwrap_err().contains("default"));
        assert!(config_template(&json!({"chat_template": 3})).is_err());
        assert_eq!(config_template(&json!({})).unwrap(), None);
    }
}
