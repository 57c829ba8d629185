//! Inputs the fuzz targets (`fuzz/`) found that broke the tokenizer's readers, each a clear
//! error now.

use std::path::Path;

use qwen3::Tokenizer;

/// `tokenizer_json`: a syntax error inside `"decoder"` made the `tokenizers` crate panic
/// (`Helper: Error("expected `,` or `}`")`) instead of failing. The file is now checked to
/// be JSON first; the error names it and says where.
#[test]
fn a_syntax_error_in_the_decoder_is_an_error_naming_the_file() {
    let dir = Path::new("some/tokenizer");
    let json = r#"{"decoder":{"type":"ByteLevel" 1}}"#;
    let error = Tokenizer::from_texts(dir, json.into(), None, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("some/tokenizer/tokenizer.json"), "{error}");
    assert!(
        error.contains("not JSON") && error.contains("column 32"),
        "{error}"
    );
}

/// A tokenizer whose `TemplateProcessing` post-processor is `single`, with the given
/// special tokens defined.
fn with_template(single: serde_json::Value, special_tokens: serde_json::Value) -> String {
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": special_tokens,
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<|im_end|>": 1}, "unk_token": "<unk>"},
    })
    .to_string()
}

/// `tokenizer_json`: a post-processor template naming a special token its
/// `special_tokens` lack (`<|im_e2nd|>`, one changed byte) made `tokenizers` panic (`no
/// entry found for key`) at the first prompt; so would a `single` template using the
/// second sequence (`index out of bounds`). Both are errors at load now, naming the file.
#[test]
fn a_post_processor_template_with_undefined_pieces_is_refused_at_load() {
    let dir = Path::new("some/tokenizer");
    let im_end = serde_json::json!({"<|im_end|>": {"id": "<|im_end|>", "ids": [1], "tokens": ["<|im_end|>"]}});
    let cases = [
        (
            with_template(
                serde_json::json!([{"SpecialToken": {"id": "<|im_e2nd|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]),
                im_end.clone(),
            ),
            "`<|im_e2nd|>`",
        ),
        (
            with_template(
                serde_json::json!([{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}]),
                im_end.clone(),
            ),
            "second sequence",
        ),
    ];
    for (json, what) in cases {
        let error = Tokenizer::from_texts(dir, json, None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("some/tokenizer/tokenizer.json"), "{error}");
        assert!(error.contains(what), "{error}");
    }
    // The well-formed template still loads and adds its token.
    let json = with_template(
        serde_json::json!([{"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]),
        im_end,
    );
    Tokenizer::from_texts(dir, json, None, None).unwrap();
}

/// `component_config`: serde_json's default float parser read `rope_theta`
/// 100000218446744073709551616.0 one ulp above the nearest double (what Python's `float`
/// and transformers read), so the config read differently after being written back. Floats
/// are read correctly rounded now (serde_json's `float_roundtrip`).
#[test]
fn long_decimals_in_a_config_read_as_python_reads_them() {
    let text = r#"{"num_hidden_layers": 3, "vocab_size": 605,
        "rope_parameters": {"rope_theta": 100000218446744073709551616.0, "rope_type": "default"}}"#;
    let config = qwen3::Qwen3Config::parse(text).unwrap();
    // float("100000218446744073709551616.0") in Python.
    assert_eq!(config.rope_theta, 1.0000021844674407e26);
    let again = qwen3::Qwen3Config::parse(&config.to_json().to_string()).unwrap();
    assert_eq!(again.rope_theta, config.rope_theta);
}
