//! The `saslname` production of RFC 5802 section 7: usernames and
//! authorization identities with `,` and `=` escaped as `=2C` and `=3D`.

use crate::error::SaslError;

/// Decode a saslname (RFC 5802 section 5.1): `=2C` is `,`, `=3D` is `=`; any
/// other `=`, a raw `,`, a NUL or an empty name is malformed.
pub fn decode_saslname(encoded: &str) -> Result<String, SaslError> {
    if encoded.is_empty() {
        return Err(SaslError::MalformedRequest("empty saslname"));
    }
    let mut decoded = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(position) = rest.find(['=', ',', '\0']) {
        decoded.push_str(&rest[..position]);
        let tail = &rest[position..];
        if let Some(after) = tail.strip_prefix("=2C") {
            decoded.push(',');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("=3D") {
            decoded.push('=');
            rest = after;
        } else {
            // RFC 5802 section 5.1: "the server MUST fail the authentication"
            // on any other use of '=' (and ',' or NUL cannot appear raw).
            return Err(SaslError::MalformedRequest("invalid escape in saslname"));
        }
    }
    decoded.push_str(rest);
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(decode_saslname("user").unwrap(), "user");
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("=3D=3D").unwrap(), "==");
        assert_eq!(decode_saslname("juli\u{e9}t").unwrap(), "juli\u{e9}t");
    }

    #[test]
    fn rejects_bad_escapes() {
        for bad in ["", "a=", "a=2c", "a=41", "a,b", "a\0b", "=", "=2"] {
            assert_eq!(
                decode_saslname(bad).unwrap_err().condition(),
                crate::SaslFailureCondition::MalformedRequest,
                "{bad:?}"
            );
        }
    }
}
