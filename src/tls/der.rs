//! Just enough DER to read a certificate's validity period (RFC 5280 §4.1.2.5), so an expired
//! certificate is refused at start with its date, and its subject's Common Names (§4.1.2.6), for
//! `--peer-cert-allowed-cn` and to name the user of a client with a verified certificate.

use std::fmt;

/// A certificate time: its calendar fields (UTC) and seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CertTime {
    fields: [u32; 6],
    pub(super) unix_seconds: i64,
}

impl fmt::Display for CertTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [year, month, day, hour, minute, second] = self.fields;
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC"
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Validity {
    pub(super) not_before: CertTime,
    pub(super) not_after: CertTime,
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const CONTEXT_0: u8 = 0xa0;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// id-at-commonName, 2.5.4.3, as encoded.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

/// One TLV: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let malformed = || "the certificate is not valid DER".to_owned();
    let (&tag, rest) = input.split_first().ok_or_else(malformed)?;
    let (&first, rest) = rest.split_first().ok_or_else(malformed)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return Err(malformed());
        }
        let len = rest[..octets]
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, &rest[octets..])
    };
    if rest.len() < len {
        return Err(malformed());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The validity of a DER certificate.
pub(super) fn validity(cert: &[u8]) -> Result<Validity, String> {
    let expect = |tag: u8, wanted: u8| {
        if tag == wanted {
            Ok(())
        } else {
            Err("the certificate is not valid DER".to_owned())
        }
    };
    let (validity, _subject) = validity_and_subject(cert)?;
    let (tag, validity, _) = tlv(validity)?;
    expect(tag, SEQUENCE)?;
    let (tag, not_before, rest) = tlv(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = tlv(rest)?;
    let not_after = time(tag, not_after)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

/// The TBS certificate from its validity on: (validity and what follows, the subject and what
/// follows).
fn validity_and_subject(cert: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let malformed = || "the certificate is not valid DER".to_owned();
    let (tag, certificate, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return Err(malformed());
    }
    let (tag, tbs, _) = tlv(certificate)?;
    if tag != SEQUENCE {
        return Err(malformed());
    }
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == CONTEXT_0 {
        // [0] version, then the serial number.
        rest = tlv(rest)?.2;
    }
    let (_signature, _, rest) = tlv(rest)?;
    let (_issuer, _, validity) = tlv(rest)?;
    let (_validity, _, subject) = tlv(validity)?;
    Ok((validity, subject))
}

/// The Common Names of a DER certificate's subject, in order, for `--peer-cert-allowed-cn`;
/// names that are not UTF-8, printable or IA5 strings are left out.
pub(super) fn common_names(cert: &[u8]) -> Result<Vec<String>, String> {
    let malformed = || "the certificate has a malformed subject".to_owned();
    let (_, subject) = validity_and_subject(cert)?;
    let (tag, mut rdns, _) = tlv(subject)?;
    if tag != SEQUENCE {
        return Err(malformed());
    }
    let mut names = Vec::new();
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !rdns.is_empty() {
        let (tag, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != SET {
            return Err(malformed());
        }
        while !set.is_empty() {
            let (tag, pair, rest) = tlv(set)?;
            set = rest;
            if tag != SEQUENCE {
                return Err(malformed());
            }
            let (tag, oid, value) = tlv(pair)?;
            if tag != OID || oid != OID_COMMON_NAME {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            if let (UTF8_STRING | PRINTABLE_STRING | IA5_STRING, Ok(text)) =
                (tag, std::str::from_utf8(text))
            {
                names.push(text.to_owned());
            }
        }
    }
    Ok(names)
}

/// The Common Name of a DER certificate's subject (the last one when there are several, as Go's
/// `pkix.Name` keeps), which names the user of a client with a verified certificate; `None`
/// when it has none.
pub fn common_name(cert: &[u8]) -> Option<String> {
    common_names(cert).ok()?.pop()
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, content: &[u8]) -> Result<CertTime, String> {
    let bad = || "the certificate has a malformed validity time".to_owned();
    let text = std::str::from_utf8(content).map_err(|_| bad())?;
    let digits = text.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
        digits
            .get(range)
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())
    };
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return Err(bad()),
    };
    let fields = [
        year,
        number(rest..rest + 2)?,
        number(rest + 2..rest + 4)?,
        number(rest + 4..rest + 6)?,
        number(rest + 6..rest + 8)?,
        number(rest + 8..rest + 10)?,
    ];
    let [_, month, day, hour, minute, second] = fields;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    let unix_seconds =
        days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second);
    Ok(CertTime {
        fields,
        unix_seconds,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 5), 20_792);
    }

    #[test]
    fn times() {
        let utc = time(UTC_TIME, b"491231235959Z").unwrap();
        assert_eq!(utc.to_string(), "2049-12-31 23:59:59 UTC");
        let old = time(UTC_TIME, b"500101000000Z").unwrap();
        assert_eq!(old.unix_seconds, -631_152_000);
        let generalized = time(GENERALIZED_TIME, b"20261205083841Z").unwrap();
        assert_eq!(
            generalized.unix_seconds,
            20_792 * 86_400 + 8 * 3600 + 38 * 60 + 41
        );
        assert!(time(UTC_TIME, b"2612050838Z").is_err());
        assert!(time(UTC_TIME, b"261305083841Z").is_err());
    }

    #[test]
    fn validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2060, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let period = validity(cert.der()).unwrap();
        assert_eq!(period.not_before.to_string(), "2020-01-02 00:00:00 UTC");
        assert_eq!(period.not_after.to_string(), "2060-03-04 00:00:00 UTC");
        assert!(validity("garbage".as_bytes()).is_err());
    }

    #[test]
    fn common_names_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-etcd-peer");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_names(cert.der()).unwrap(), vec!["kube-etcd-peer"]);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert!(common_names(cert.der()).unwrap().is_empty());
        assert!(common_names(b"garbage").is_err());
    }

    #[test]
    fn common_name_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        // No CN at all.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"garbage"), None);
    }
}
