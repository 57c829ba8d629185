//! `tokenizer_config.json` (special tokens, `chat_template` as a string or a list of named
//! templates) and `chat_template.jinja`, rendered for prompts. The input is the config,
//! then after a NUL byte the `.jinja` file (none if there is no NUL), then after another
//! the prompt.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qwen3::{Message, Tokenizer};

/// A tiny word-level tokenizer: the target is the config and the template, not this.
const TOKENIZER: &str = r#"{
  "version": "1.0",
  "added_tokens": [
    {"id": 3, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 4, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 5, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "fox": 2}, "unk_token": "<unk>"}
}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let config = parts.next().unwrap_or_default();
    let jinja = parts.next();
    let prompt = parts.next().unwrap_or("a fox");
    let dir = Path::new("fuzz/tokenizer");
    let tokenizer = match Tokenizer::from_texts(
        dir,
        TOKENIZER.into(),
        Some(config.into()),
        jinja.map(str::to_owned),
    ) {
        Ok(tokenizer) => tokenizer,
        Err(e) => {
            assert!(e.to_string().contains("fuzz/tokenizer"), "{e}");
            return;
        }
    };
    let _ = tokenizer.prompt_ids(prompt, 64);
    let messages = [
        Message::system("be brief"),
        Message::user(prompt),
        Message::assistant("<think>\n</think>\n\na fox"),
        Message::new("tool", "{}"),
    ];
    for (generation, thinking) in [(false, false), (true, true)] {
        let _ = tokenizer.apply_chat_template(&messages, generation, thinking);
    }
});
