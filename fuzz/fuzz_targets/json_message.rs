//! The Kafka message decoders: any bytes as a message value, with the built-in and the
//! all-types schema. Neither may panic; the consumer's columnar decoder
//! (`consume::decode::Decoder`, what `app consume` runs) must accept exactly what the reference
//! decoder (`Schema::decode_json`) accepts, with the same values, except that it also accepts
//! values whose unknown fields nest deeper than serde_json's recursion limit (it skips them
//! without recursing); and an accepted message must re-encode to JSON that decodes to the same
//! values.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for schema in fuzz_common::schemas() {
        let consumer = fuzz_common::consumer_decode(&schema, data);
        match schema.decode_json(data) {
            Ok((values, source)) => {
                fuzz_common::assert_round_trip(&schema, &values, source.as_ref());
                assert_eq!(consumer.as_ref(), Ok(&values), "the consumer's decoder disagrees");
            }
            Err(e) => {
                assert!(
                    !e.field.is_empty() && !e.reason.is_empty(),
                    "an error says where and why"
                );
                if !e.reason.contains("recursion limit") {
                    assert!(consumer.is_err(), "the consumer accepts what the reference refuses: {e}");
                }
                let _ = e.to_string();
            }
        }
    }
});
