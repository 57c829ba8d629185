//! Chat templates, rendered as transformers renders them (`_compile_jinja_template` and
//! `render_jinja_template` in `transformers/utils/chat_template_utils.py`): Jinja2 with
//! `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, one trailing newline
//! of the template dropped (Jinja2's default), Python's string methods, a
//! `raise_exception` function and a `tojson` filter that writes what Python's
//! `json.dumps(x, ensure_ascii=False)` writes. The template sees `messages`,
//! `add_generation_prompt`, the caller's variables (`enable_thinking`) and the tokenizer's
//! named special tokens (`eos_token`, `pad_token`, ...), as `apply_chat_template` passes
//! them; `tools` and `documents` are none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::{Qwen3Error, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// A message as the template sees it: a dict `{"role": ..., "content": ...}`, its keys
/// in that order as in Python (what `tojson` writes).
impl Object for Message {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(Value::from(self.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The template's name inside its environment: what minijinja's errors show as the
/// location (`in chat_template:12`).
const NAME: &str = "chat_template";

/// A compiled chat template and the file it came from.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` is the file it was read from (errors name it).
    pub fn new(source: String, origin: &Path) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        let fail = |e: Error| Qwen3Error::Template {
            path: origin.to_path_buf(),
            message: crate::one_line(e),
        };
        env.set_syntax(syntax.build().map_err(fail)?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source).map_err(fail)?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_path_buf(),
        })
    }

    /// The file the template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Renders `messages`; `variables` are the template's keyword arguments besides
    /// `messages` and `add_generation_prompt` (special tokens, `enable_thinking`), later
    /// ones winning.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        variables: &[(&str, Value)],
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(m.clone()))
            .collect();
        let mut context: BTreeMap<&str, Value> = variables.iter().cloned().collect();
        context.insert("messages", Value::from(messages));
        context.insert("tools", Value::from(()));
        context.insert("documents", Value::from(()));
        context.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let fail = |e: Error| Qwen3Error::Template {
            path: self.origin.clone(),
            message: crate::one_line(e),
        };
        // The template was added under NAME in `new`.
        let template = self.env.get_template(NAME).map_err(fail)?;
        template.render(Value::from(context)).map_err(fail)
    }
}

/// transformers' `raise_exception(message)`: the template refuses its input.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`: Python's `json.dumps` with those arguments. Unlike Jinja2's own
/// filter it escapes no HTML characters.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    // json.dumps' defaults: (', ', ': '), or (',', ': ') when indenting.
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    Json {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    }
    .write(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

/// The options of `json.dumps` that [`tojson`] takes.
struct Json {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl Json {
    fn write(
        &self,
        value: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => match value.as_i64() {
                Some(n) if !is_float(value) => out.push_str(&n.to_string()),
                _ => out.push_str(&python_float(f64::try_from(value.clone())?)),
            },
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), items.len(), depth, out, |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(('{', '}'), keys.len(), depth, out, |i, out| {
                    let key = &keys[i];
                    match key.as_str() {
                        Some(s) => self.string(s, out),
                        None => self.string(&key.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&value.get_item(key)?, depth + 1, out)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    /// `[a, b]`, or one item per line when indenting; empty containers stay `[]`.
    fn container(
        &self,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), Error>,
    ) -> std::result::Result<(), Error> {
        out.push(open);
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            item(i, out)?;
        }
        if let (Some(indent), true) = (&self.indent, len > 0) {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`,
    /// `\u00XX` for other control characters, and with `ensure_ascii` every non-ASCII
    /// character as `\uXXXX` (UTF-16 surrogate pairs beyond the BMP).
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Whether a number value holds a float (Python writes `1.0`, not `1`).
fn is_float(value: &Value) -> bool {
    // minijinja's integers print without a point or exponent; its floats always have one.
    let text = value.to_string();
    text.contains(['.', 'e', 'E', 'n', 'N', 'i'])
}

/// Python's `repr` of a float: the shortest digits that read back, in positional
/// notation for exponents -4..16 (`0.0001`, `1e+16`, `1e-05`), `NaN` and `Infinity` as
/// `json.dumps` writes them.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives Rust's shortest round-trip digits as `d.ddde±x`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message], variables: &[(&str, Value)]) -> Result<String> {
        ChatTemplate::new(source.into(), Path::new("t.jinja"))?.render(messages, true, variables)
    }

    #[test]
    fn blocks_are_trimmed_and_the_final_newline_dropped_as_jinja2_does() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let out = render(source, &[Message::user("a"), Message::user("b")], &[]).unwrap();
        assert_eq!(out, "[a]\n[b]\n");
    }

    #[test]
    fn python_string_methods_and_loop_controls_work() {
        let source = "{% for m in messages %}{% if loop.index0 > 0 %}{% break %}{% endif %}\
            {{ m.content.split('|')[-1].strip() }}{{ m.content.startswith('x') }}{% endfor %}";
        let out = render(source, &[Message::user("x| y "), Message::user("z")], &[]).unwrap();
        assert_eq!(out, "yTrue"); // Python's spelling, as Jinja2 prints it
    }

    #[test]
    fn variables_and_absent_tools_reach_the_template() {
        let source = "{{ eos_token }}{% if tools %}T{% endif %}{% if enable_thinking is defined and enable_thinking is false %}N{% endif %}{{ add_generation_prompt }}{{ none }}";
        let vars = [
            ("eos_token", Value::from("<e>")),
            ("enable_thinking", Value::from(false)),
        ];
        assert_eq!(render(source, &[], &vars).unwrap(), "<e>NTrueNone");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message_and_the_file() {
        let err = render("{{ raise_exception('no system role here') }}", &[], &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.jinja: chat template:"), "{text}");
        assert!(
            text.contains("no system role here") && !text.contains('\n'),
            "{text}"
        );
    }

    #[test]
    fn syntax_errors_are_one_line_naming_the_file() {
        let err = ChatTemplate::new(
            "{% if x %}unclosed".into(),
            Path::new("dir/chat_template.jinja"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("dir/chat_template.jinja: chat template: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let source = "{{ messages[0] | tojson }} {{ [1, 2.5, none, true, 'é\"<'] | tojson }} {{ {'b': 1e-5, 'a': 1e20} | tojson(sort_keys=true) }} {{ [1, [2]] | tojson(indent=2) }} {{ 'é' | tojson(ensure_ascii=true) }}";
        let out = render(source, &[Message::user("hi")], &[]).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"hi\"} [1, 2.5, null, true, \"é\\\"<\"] {\"a\": 1e+20, \"b\": 1e-05} [\n  1,\n  [\n    2\n  ]\n] \"\\u00e9\""
        );
    }

    #[test]
    fn floats_print_as_python_repr() {
        for (x, python) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (-2.5e-7, "-2.5e-07"),
        ] {
            assert_eq!(python_float(x), python, "{x}");
        }
    }
}
