//! `scheduler_config.json`, and the schedules a config that parses gives for a range of
//! step counts, image sizes and strengths: finite, decreasing sigmas ending at 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zimage::scheduler::{steps_at_strength, SchedulerConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = SchedulerConfig::parse(text) else {
        return;
    };
    let _ = SchedulerConfig::parse(&config.to_json().to_string()).expect("written back, it parses");
    for steps in [1, 2, 9, 50] {
        for seq_len in [0, 1, 256, 4096, u32::MAX] {
            let schedule = config.schedule(steps, seq_len);
            assert_eq!(schedule.len(), steps);
            for i in 0..schedule.len() {
                let _ = (schedule.model_t(i), schedule.dt(i));
            }
            for strength in [0.0, 0.3, 1.0] {
                let _ = schedule.truncated(strength);
                let _ = steps_at_strength(steps, strength);
            }
        }
    }
});
