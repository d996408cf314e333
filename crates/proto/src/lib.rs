//! Borough's gRPC contracts, generated at build time from `proto/` (nothing generated is
//! committed). Each package is a module named after it.

/// A write's idempotency key: the `Idempotency-Key` header at the edge, the gRPC metadata
/// key of the same name inside (HTTP/2 and gRPC names are lower case).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set to `true` on a reply that repeats the one recorded for the call's idempotency key:
/// gRPC metadata from the user service, the same header at the edge.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub mod user {
    pub mod v1 {
        tonic::include_proto!("borough.user.v1");
    }

    // The messages that carry secrets show them as `<redacted>` (their `Debug` derive is
    // skipped in build.rs), so no log line or panic message can print one.
    impl std::fmt::Debug for v1::IssuedApiKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("IssuedApiKey")
                .field("key", &self.key)
                .field("secret", &"<redacted>")
                .finish()
        }
    }

    impl std::fmt::Debug for v1::CreateTenantRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let redacted = |url: &Option<String>| url.as_ref().map(|_| "<redacted>");
            f.debug_struct("CreateTenantRequest")
                .field("name", &self.name)
                .field("placement", &self.placement)
                .field("database_url", &redacted(&self.database_url))
                .field("read_url", &redacted(&self.read_url))
                .finish()
        }
    }

    impl std::fmt::Debug for v1::AuthenticateApiKeyRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("AuthenticateApiKeyRequest")
                .field("api_key", &"<redacted>")
                .finish()
        }
    }

    /// The most rejected rows an import reply lists in full (the rest are counted).
    pub const MAX_IMPORT_REJECTIONS: usize = 10_000;
    /// The most failed chunks an import reply lists in full (the rest are counted).
    pub const MAX_IMPORT_FAILED_CHUNKS: usize = 100;
    /// The longest reason given for a rejected row, in characters.
    pub const MAX_REASON_CHARS: usize = 200;

    /// `reason`, cut to [`MAX_REASON_CHARS`] characters (with `…` when cut): a reason may
    /// quote the caller's input, and a report must not grow with it.
    pub fn bounded_reason(reason: String) -> String {
        match reason.char_indices().nth(MAX_REASON_CHARS) {
            None => reason,
            Some((at, _)) => {
                let mut cut = reason;
                cut.truncate(at);
                cut.push('…');
                cut
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_carrying_secrets_hide_them_in_debug() {
            let issued = v1::IssuedApiKey {
                key: None,
                secret: "bk_0123456789ab_s3cr3t".into(),
            };
            let create = v1::CreateTenantRequest {
                name: "acme".into(),
                placement: 3,
                database_url: Some("postgres://u:s3cr3t@db/x".into()),
                read_url: None,
            };
            let auth = v1::AuthenticateApiKeyRequest {
                api_key: "bk_0123456789ab_s3cr3t".into(),
            };
            for debug in [
                format!("{issued:?}"),
                format!("{create:?}"),
                format!("{auth:?}"),
                format!(
                    "{:?}",
                    v1::CreateTenantResponse {
                        tenant: None,
                        api_key: Some(issued.clone())
                    }
                ),
            ] {
                assert!(!debug.contains("s3cr3t"), "{debug}");
            }
            assert!(format!("{create:?}").contains("acme"));
        }

        #[test]
        fn reasons_are_cut_at_200_characters() {
            assert_eq!(bounded_reason("short".into()), "short");
            let cut = bounded_reason("é".repeat(1000));
            assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
            assert!(cut.ends_with('…'));
        }
    }
}

pub mod query {
    pub mod v1 {
        tonic::include_proto!("borough.query.v1");
    }

    /// Response metadata of `GetUserInfo` when it served a stale copy because the tenant's
    /// database was unreachable: `true`, and the copy's age in whole seconds.
    pub const STALE_METADATA: &str = "borough-stale";
    pub const STALE_AGE_METADATA: &str = "borough-stale-age";
}

pub mod config {
    pub mod v1 {
        tonic::include_proto!("borough.config.v1");
    }

    /// gRPC metadata naming who makes a change (recorded in history); set by the gateway.
    pub const ACTOR_METADATA: &str = "x-borough-actor";
    /// gRPC metadata of a watch that cannot replay what its client missed because history
    /// was pruned.
    pub const COMPACTED_METADATA: &str = "x-borough-compacted";
}

/// Codecs of the generated services.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Prost, with a 1 KiB initial encode buffer per call instead of tonic's 8 KiB: a config
    /// replica holds a thousand idle watch streams, each keeping its buffer for life. The
    /// buffer still grows for larger messages.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

    const INITIAL_BUFFER: usize = 1024;
    const YIELD_THRESHOLD: usize = 32 * 1024;

    impl<T, U> Codec for LeanCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
        }
    }
}

/// Conversions between protobuf timestamps and `chrono`.
pub mod time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use prost_types::Timestamp;

    pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
        Timestamp {
            seconds: at.timestamp(),
            nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }

    /// `None` when the timestamp is out of chrono's range or has invalid nanos.
    pub fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
        let nanos = u32::try_from(ts.nanos).ok()?;
        DateTime::from_timestamp(ts.seconds, nanos)
    }

    /// RFC 3339 in UTC with microseconds (PostgreSQL's precision), e.g.
    /// `2026-11-24T23:56:53.123456Z`; empty when absent or invalid.
    pub fn to_rfc3339(ts: Option<&Timestamp>) -> String {
        ts.and_then(from_timestamp)
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))
            .unwrap_or_default()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn timestamps_round_trip_through_protobuf_and_render_as_utc_rfc3339() {
            let at = DateTime::from_timestamp(1_795_000_000, 123_456_000).expect("in range");
            let ts = to_timestamp(at);
            assert_eq!(from_timestamp(&ts), Some(at));
            assert_eq!(to_rfc3339(Some(&ts)), "2026-11-18T11:06:40.123456Z");
            assert_eq!(to_rfc3339(None), "");
        }
    }
}

/// Keyset pagination: page sizes and opaque page tokens.
///
/// A token is the base64url of `v1:<last id>`; callers must treat it as opaque, so its
/// format can change with the version tag.
pub mod page {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use uuid::Uuid;

    pub const DEFAULT_PAGE_SIZE: i64 = 20;
    pub const MAX_PAGE_SIZE: i64 = 100;

    /// The page size to use: the default for 0, capped at the maximum; negative is an error.
    pub fn page_size(requested: i32) -> Result<i64, String> {
        match requested {
            0 => Ok(DEFAULT_PAGE_SIZE),
            n if n < 0 => Err(format!("page size must be between 1 and {MAX_PAGE_SIZE}")),
            n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
        }
    }

    pub fn encode_token(last_id: Uuid) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{last_id}"))
    }

    /// `Ok(None)` for an empty token (the first page).
    pub fn decode_token(token: &str) -> Result<Option<Uuid>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || "the page token is not valid".to_owned();
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        let id = text.strip_prefix("v1:").ok_or_else(invalid)?;
        Uuid::parse_str(id).map(Some).map_err(|_| invalid())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn page_tokens_round_trip_and_garbage_is_rejected() {
            let id = Uuid::now_v7();
            assert_eq!(decode_token(&encode_token(id)), Ok(Some(id)));
            assert_eq!(decode_token(""), Ok(None));
            assert!(decode_token("not-a-token!").is_err());
            assert!(decode_token(&URL_SAFE_NO_PAD.encode("v2:x")).is_err());
        }

        #[test]
        fn page_sizes_default_cap_and_reject_negatives() {
            assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
            assert_eq!(page_size(5), Ok(5));
            assert_eq!(page_size(10_000), Ok(MAX_PAGE_SIZE));
            assert!(page_size(-1).is_err());
        }
    }
}
