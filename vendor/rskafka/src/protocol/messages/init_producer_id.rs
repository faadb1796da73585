//! reclamacoes patch 6 (vendor/README.md): `InitProducerId` (API key 22), which gives an
//! idempotent (or transactional) producer its producer id and epoch.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_InitProducerId>
//! - [KIP-98](https://cwiki.apache.org/confluence/display/KAFKA/KIP-98+-+Exactly+Once+Delivery+and+Transactional+Messaging)
//! - [KIP-360](https://cwiki.apache.org/confluence/display/KAFKA/KIP-360%3A+Improve+reliability+of+idempotent%2Ftransactional+producer)
//!   (version 3: the producer id and epoch in the request)
use std::io::{Read, Write};

use crate::protocol::{
    api_key::ApiKey,
    api_version::{ApiVersion, ApiVersionRange},
    error::Error as ApiError,
    primitives::{CompactNullableString, Int16, Int32, Int64, NullableString, TaggedFields},
    traits::{ReadType, WriteType},
};

use super::{
    ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};

#[cfg(test)]
use proptest::prelude::*;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InitProducerIdRequest {
    /// The transactional id, or null if the producer is not transactional.
    pub transactional_id: NullableString,

    /// The time in ms to wait before aborting idle transactions sent by this producer. This is
    /// only relevant if a transactional id has been defined (-1 otherwise).
    pub transaction_timeout_ms: Int32,

    /// The producer id, to resume after an `INVALID_PRODUCER_EPOCH` error (-1 for a new one).
    ///
    /// Added in version 3.
    pub producer_id: Option<Int64>,

    /// The producer's current epoch (-1 for a new producer id).
    ///
    /// Added in version 3.
    pub producer_epoch: Option<Int16>,

    /// The tagged fields.
    ///
    /// Added in version 2.
    pub tagged_fields: Option<TaggedFields>,
}

impl InitProducerIdRequest {
    /// The request of a new idempotent, non-transactional producer.
    pub fn idempotent() -> Self {
        Self {
            transactional_id: NullableString(None),
            transaction_timeout_ms: Int32(-1),
            producer_id: None,
            producer_epoch: None,
            tagged_fields: None,
        }
    }
}

impl<W> WriteVersionedType<W> for InitProducerIdRequest
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        if v < 3 && (self.producer_id.is_some() || self.producer_epoch.is_some()) {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "producer_id".to_string(),
            });
        }

        if v >= 2 {
            CompactNullableString(self.transactional_id.0.clone()).write(writer)?;
        } else {
            self.transactional_id.write(writer)?;
        }
        self.transaction_timeout_ms.write(writer)?;
        if v >= 3 {
            self.producer_id.unwrap_or(Int64(-1)).write(writer)?;
            self.producer_epoch.unwrap_or(Int16(-1)).write(writer)?;
        }
        if v >= 2 {
            match self.tagged_fields.as_ref() {
                Some(tagged_fields) => tagged_fields.write(writer)?,
                None => TaggedFields::default().write(writer)?,
            }
        }

        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for InitProducerIdRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let transactional_id = if v >= 2 {
            NullableString(CompactNullableString::read(reader)?.0)
        } else {
            NullableString::read(reader)?
        };
        let transaction_timeout_ms = Int32::read(reader)?;
        let producer_id = (v >= 3).then(|| Int64::read(reader)).transpose()?;
        let producer_epoch = (v >= 3).then(|| Int16::read(reader)).transpose()?;
        let tagged_fields = (v >= 2).then(|| TaggedFields::read(reader)).transpose()?;

        Ok(Self {
            transactional_id,
            transaction_timeout_ms,
            producer_id,
            producer_epoch,
            tagged_fields,
        })
    }
}

impl RequestBody for InitProducerIdRequest {
    type ResponseBody = InitProducerIdResponse;

    const API_KEY: ApiKey = ApiKey::InitProducerId;

    /// Versions 0 to 4: version 5 and later add transactional error codes and two-phase commit,
    /// which an idempotent producer has no use for.
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(4)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion = ApiVersion(Int16(2));
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InitProducerIdResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    pub throttle_time_ms: Int32,

    /// The error code, or 0 if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(ApiError::new)"))]
    pub error: Option<ApiError>,

    /// The current producer id.
    pub producer_id: Int64,

    /// The current epoch associated with the producer id.
    pub producer_epoch: Int16,

    /// The tagged fields.
    ///
    /// Added in version 2.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for InitProducerIdResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        Ok(Self {
            throttle_time_ms: Int32::read(reader)?,
            error: ApiError::new(Int16::read(reader)?.0),
            producer_id: Int64::read(reader)?,
            producer_epoch: Int16::read(reader)?,
            tagged_fields: (v >= 2).then(|| TaggedFields::read(reader)).transpose()?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for InitProducerIdResponse
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        self.throttle_time_ms.write(writer)?;
        let error: Int16 = self.error.into();
        error.write(writer)?;
        self.producer_id.write(writer)?;
        self.producer_epoch.write(writer)?;
        if v >= 2 {
            match self.tagged_fields.as_ref() {
                Some(tagged_fields) => tagged_fields.write(writer)?,
                None => TaggedFields::default().write(writer)?,
            }
        }

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::protocol::messages::test_utils::test_roundtrip_versioned;

    use super::*;

    test_roundtrip_versioned!(
        InitProducerIdRequest,
        InitProducerIdRequest::API_VERSION_RANGE.min(),
        InitProducerIdRequest::API_VERSION_RANGE.max(),
        test_roundtrip_init_producer_id_request
    );

    test_roundtrip_versioned!(
        InitProducerIdResponse,
        InitProducerIdRequest::API_VERSION_RANGE.min(),
        InitProducerIdRequest::API_VERSION_RANGE.max(),
        test_roundtrip_init_producer_id_response
    );

    fn written(request: &InitProducerIdRequest, v: i16) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        request
            .write_versioned(&mut buf, ApiVersion(Int16(v)))
            .unwrap();
        buf.into_inner()
    }

    /// The bytes of an idempotent producer's request, as the protocol reference lays them out.
    #[test]
    fn idempotent_request_bytes() {
        let request = InitProducerIdRequest::idempotent();
        // v0 and v1: null STRING (length -1), timeout -1.
        let v0 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(written(&request, 0), v0);
        assert_eq!(written(&request, 1), v0);
        // v2: null COMPACT_NULLABLE_STRING (0), timeout -1, no tagged fields (0).
        assert_eq!(written(&request, 2), [0x00, 0xff, 0xff, 0xff, 0xff, 0x00]);
        // v3 and v4: also producer id -1 and epoch -1 before the tagged fields.
        let v3 = [
            0x00, 0xff, 0xff, 0xff, 0xff, // transactional id, timeout
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // producer id
            0xff, 0xff, // producer epoch
            0x00, // tagged fields
        ];
        assert_eq!(written(&request, 3), v3);
        assert_eq!(written(&request, 4), v3);
    }

    #[test]
    fn producer_id_needs_version_3() {
        let request = InitProducerIdRequest {
            producer_id: Some(Int64(7)),
            producer_epoch: Some(Int16(0)),
            ..InitProducerIdRequest::idempotent()
        };
        let mut buf = Cursor::new(Vec::new());
        assert!(matches!(
            request.write_versioned(&mut buf, ApiVersion(Int16(2))),
            Err(WriteVersionedError::FieldNotAvailable { .. })
        ));
    }

    #[test]
    fn response_with_producer_id() {
        // v4: throttle 0, no error, producer id 1000, epoch 0, no tagged fields.
        let bytes = [
            0, 0, 0, 0, // throttle
            0, 0, // error
            0, 0, 0, 0, 0, 0, 0x03, 0xe8, // producer id
            0, 0, // epoch
            0, // tagged fields
        ];
        let response =
            InitProducerIdResponse::read_versioned(&mut Cursor::new(bytes), ApiVersion(Int16(4)))
                .unwrap();
        assert_eq!(response.error, None);
        assert_eq!(response.producer_id, Int64(1000));
        assert_eq!(response.producer_epoch, Int16(0));
    }
}
