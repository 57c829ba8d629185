//! `dit serve`'s request body (`POST /v1/images/generations`): a body the parser accepts
//! must be within the server's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zimage::api::{parse, Limits, MAX_IMAGES};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        model: "tiny".into(),
        max_size: 512,
        max_steps: 50,
        default_size: 256,
        default_steps: 9,
    };
    if let Ok(g) = parse(data, &limits, || 7) {
        assert!((1..=MAX_IMAGES).contains(&g.n));
        assert!((1..=limits.max_steps).contains(&g.steps));
        for side in [g.width, g.height] {
            assert!(
                side > 0 && side <= limits.max_size && side % 16 == 0,
                "{side}"
            );
        }
        assert!(g.guidance_scale.is_finite() && g.guidance_scale >= 0.0);
    }
});
