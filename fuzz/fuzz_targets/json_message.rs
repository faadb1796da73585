//! The Kafka message decoder (`Schema::decode_json`): any bytes as a message value, with the
//! built-in and the all-types schema. Must never panic; a decoded message must re-encode to
//! JSON that decodes to the same values (so a value the consumer accepts is well-formed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for schema in fuzz_common::schemas() {
        match schema.decode_json(data) {
            Ok((values, source)) => {
                fuzz_common::assert_round_trip(&schema, &values, source.as_ref());
            }
            Err(e) => {
                assert!(
                    !e.field.is_empty() && !e.reason.is_empty(),
                    "an error says where and why"
                );
                let _ = e.to_string();
            }
        }
    }
});
