//! `tokenizer.json` (what the `tokenizers` crate reads: models, normalizers,
//! pre-tokenizers, post-processors, added tokens), then a prompt through it: the chat
//! template of a small fixed `tokenizer_config.json`, truncation, decoding.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qwen3::{Message, Tokenizer};

const CONFIG: &str = r#"{
  "eos_token": "<|im_end|>",
  "pad_token": "<|endoftext|>",
  "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("fuzz/tokenizer");
    let tokenizer = match Tokenizer::from_texts(dir, json.into(), Some(CONFIG.into()), None) {
        Ok(tokenizer) => tokenizer,
        Err(e) => {
            assert!(e.to_string().contains("fuzz/tokenizer"), "{e}");
            return;
        }
    };
    let _ = tokenizer.vocab_size();
    let _ = (tokenizer.pad_token_id(), tokenizer.eos_token_id());
    for max_length in [0, 3, 64] {
        let _ = tokenizer.prompt_ids("a red fox <|im_end|> in the snów ☃", max_length);
    }
    let messages = [Message::system("be brief"), Message::user("hi")];
    let _ = tokenizer.apply_chat_template(&messages, true, false);
    if let Ok(ids) = tokenizer.encode("the fox, <|im_start|> 12 ß") {
        let _ = tokenizer.decode(&ids, true);
        let _ = tokenizer.decode(&ids, false);
    }
    let _ = tokenizer.decode(&[0, 1, 2, 600, 601, u32::MAX], false);
});
