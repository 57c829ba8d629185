//! The tokenizer and chat template against transformers' `AutoTokenizer` on the shipped
//! tokenizer (`tokenizer/`), with the references in `tests/fixtures/tokens.json`.

use std::path::Path;

use qwen3::tokenizer::MAX_SEQUENCE_LENGTH;
use qwen3::{Message, Tokenizer};
use serde::Deserialize;

mod common;
use common::{fixtures, one_line_naming};

#[derive(Deserialize)]
struct Case {
    prompt: String,
    text: String,
    input_ids: Vec<i32>,
    untruncated_len: Option<usize>,
    text_no_think: Option<String>,
    input_ids_no_think: Option<Vec<u32>>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shipped_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tokenizer"))
}

#[test]
fn prompt_ids_and_text_match_the_pipeline_for_every_prompt() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let cases = cases();
    assert!(cases.len() >= 10);
    for case in &cases {
        let text = tokenizer
            .apply_chat_template(&[Message::user(&case.prompt)], true, true)
            .unwrap();
        assert_eq!(text, case.text, "text of {:?}", case.prompt);
        let ids = tokenizer
            .prompt_ids(&case.prompt, MAX_SEQUENCE_LENGTH)
            .unwrap();
        assert_eq!(ids.ids, case.input_ids, "ids of {:?}", case.prompt);
        let untruncated = case.untruncated_len.unwrap_or(case.input_ids.len());
        assert_eq!(
            ids.dropped,
            untruncated - case.input_ids.len(),
            "{:?}",
            case.prompt
        );
    }
    // The over-long prompt is there and was cut.
    assert!(cases
        .iter()
        .any(|c| c.untruncated_len.unwrap_or(0) > MAX_SEQUENCE_LENGTH));
}

#[test]
fn disabled_thinking_renders_and_tokenizes_as_transformers() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let mut checked = 0;
    for case in cases() {
        let (Some(text), Some(ids)) = (&case.text_no_think, &case.input_ids_no_think) else {
            continue;
        };
        let ours = tokenizer
            .apply_chat_template(&[Message::user(&case.prompt)], true, false)
            .unwrap();
        assert_eq!(&ours, text, "{:?}", case.prompt);
        assert_eq!(&tokenizer.encode(&ours).unwrap(), ids, "{:?}", case.prompt);
        checked += 1;
    }
    assert!(checked >= 2, "{checked} no-think cases");
}

#[test]
fn truncation_keeps_the_first_tokens_and_counts_the_rest() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let long = cases()
        .into_iter()
        .find(|c| c.untruncated_len.unwrap_or(0) > MAX_SEQUENCE_LENGTH)
        .unwrap();
    let full = tokenizer.prompt_ids(&long.prompt, usize::MAX).unwrap();
    assert_eq!(
        (full.ids.len(), full.dropped),
        (long.untruncated_len.unwrap(), 0)
    );
    for max in [0, 1, 100, 512] {
        let cut = tokenizer.prompt_ids(&long.prompt, max).unwrap();
        assert_eq!(cut.ids, full.ids[..max]);
        assert_eq!(cut.dropped, full.ids.len() - max);
    }
}

#[test]
fn the_shipped_directory_reads_like_the_builtin() {
    let builtin = Tokenizer::builtin().unwrap();
    let from_dir = Tokenizer::from_dir(shipped_dir()).unwrap();
    assert_eq!(builtin.vocab_size(), 605);
    assert_eq!(from_dir.vocab_size(), 605);
    assert_eq!(builtin.pad_token_id(), Some(600));
    assert_eq!(builtin.eos_token_id(), Some(602));
    assert_eq!(builtin.special_token("bos_token"), None);
    let text = "<|im_start|>user\nhé 👍<|im_end|>";
    assert_eq!(
        builtin.encode(text).unwrap(),
        from_dir.encode(text).unwrap()
    );
}

#[test]
fn special_tokens_in_text_are_single_tokens_and_decode_back() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let ids = tokenizer
        .encode("<|im_start|><think>x</think><|im_end|>")
        .unwrap();
    assert_eq!(ids[..2], [601, 603]);
    assert_eq!(*ids.last().unwrap(), 602);
    let text = "  runs of spaces, Größe, 雪, 👨‍👩‍👧 ";
    let ids = tokenizer.encode(text).unwrap();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    let with_special = tokenizer.encode("<|im_start|>hi<|im_end|>").unwrap();
    assert_eq!(tokenizer.decode(&with_special, true).unwrap(), "hi");
    assert!(tokenizer.encode("").unwrap().is_empty());
}

/// A tokenizer directory with the shipped files, `name` replaced by `contents`.
fn dir_with(name: &str, contents: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(shipped_dir().join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join(name), contents).unwrap();
    dir
}

#[test]
fn chat_template_jinja_takes_priority_over_the_config() {
    let dir = dir_with(
        "chat_template.jinja",
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\n",
    );
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let text = tokenizer
        .apply_chat_template(&[Message::system("s"), Message::user("u")], true, true)
        .unwrap();
    assert_eq!(text, "<system>s<user>u");
}

#[test]
fn malformed_tokenizer_json_is_one_line_naming_it() {
    let dir = dir_with("tokenizer.json", "{\"model\": {\"type\": \"BPE\",");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    one_line_naming(err, &dir.path().join("tokenizer.json"));

    let dir = dir_with("tokenizer.json", r#"{"model": {"type": "NoSuchModel"}}"#);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    one_line_naming(err, &dir.path().join("tokenizer.json"));
}

#[test]
fn malformed_tokenizer_config_is_one_line_naming_it() {
    let dir = dir_with("tokenizer_config.json", "{\"chat_template\": ");
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    one_line_naming(err, &dir.path().join("tokenizer_config.json"));

    let dir = dir_with("tokenizer_config.json", r#"{"pad_token": 600}"#);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    let text = one_line_naming(err, &dir.path().join("tokenizer_config.json"));
    assert!(text.contains("pad_token"), "{text}");
}

#[test]
fn template_syntax_errors_are_one_line_naming_the_file() {
    let dir = dir_with(
        "chat_template.jinja",
        "{% for m in messages %}\n{{ m.content \n",
    );
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    let text = one_line_naming(err, &dir.path().join("chat_template.jinja"));
    assert!(text.contains("syntax error"), "{text}");

    let config = r#"{"chat_template": "{% if messages %}{% endfor %}"}"#;
    let dir = dir_with("tokenizer_config.json", config);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    one_line_naming(err, &dir.path().join("tokenizer_config.json"));
}

#[test]
fn template_errors_at_render_time_name_the_file() {
    let dir = dir_with(
        "chat_template.jinja",
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}",
    );
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    let err = tokenizer
        .apply_chat_template(&[Message::assistant("a")], true, true)
        .unwrap_err();
    let text = one_line_naming(err, &dir.path().join("chat_template.jinja"));
    assert!(
        text.contains("Conversations must start with the user"),
        "{text}"
    );
}

#[test]
fn a_tokenizer_without_template_encodes_but_cannot_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        shipped_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.encode("<|im_end|>").unwrap(), [602]);
    assert_eq!(tokenizer.pad_token_id(), None);
    let err = tokenizer.prompt_ids("hi", 512).unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn a_missing_directory_names_the_file_it_wanted() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(&dir.path().join("absent")).unwrap_err();
    one_line_naming(err, &dir.path().join("absent/tokenizer.json"));
}
