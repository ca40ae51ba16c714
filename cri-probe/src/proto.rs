//! The CRI `StatusResponse`, decoded by hand from protobuf wire format (field numbers from
//! Kubernetes' cri-api `api.proto`): status (1) → conditions (1) → type (1), status (2),
//! reason (3), message (4). Unknown fields are skipped, as protobuf requires.

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

pub(crate) fn parse_status_response(bytes: &[u8]) -> Result<Vec<Condition>, String> {
    let mut conditions = Vec::new();
    for (field, value) in fields(bytes)? {
        if let (1, Value::Bytes(status)) = (field, value) {
            for (field, value) in fields(status)? {
                if let (1, Value::Bytes(condition)) = (field, value) {
                    conditions.push(parse_condition(condition)?);
                }
            }
        }
    }
    Ok(conditions)
}

fn parse_condition(bytes: &[u8]) -> Result<Condition, String> {
    let mut condition = Condition::default();
    for (field, value) in fields(bytes)? {
        match (field, value) {
            (1, Value::Bytes(b)) => condition.kind = String::from_utf8_lossy(b).into_owned(),
            (2, Value::Varint(v)) => condition.status = v != 0,
            (3, Value::Bytes(b)) => condition.reason = String::from_utf8_lossy(b).into_owned(),
            (4, Value::Bytes(b)) => condition.message = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    Ok(condition)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut bytes)?),
            1 => skip(&mut bytes, 8)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "length overflow")?;
                if len > bytes.len() {
                    return Err("truncated field".into());
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                Value::Bytes(value)
            }
            5 => skip(&mut bytes, 4)?,
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn skip<'a>(bytes: &mut &'a [u8], n: usize) -> Result<Value<'a>, String> {
    if bytes.len() < n {
        return Err("truncated fixed field".into());
    }
    *bytes = &bytes[n..];
    Ok(Value::Fixed)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![field << 3 | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn conditions_are_decoded() {
        let mut ready = len_field(1, b"RuntimeReady");
        ready.extend_from_slice(&[2 << 3, 1]);
        let mut network = len_field(1, b"NetworkReady");
        network.extend_from_slice(&[2 << 3, 0]);
        network.extend(len_field(3, b"NetworkPluginNotReady"));
        let mut status = len_field(1, &ready);
        status.extend(len_field(1, &network));
        let mut response = len_field(1, &status);
        response.extend(len_field(2, b"ignored map entry"));
        let conditions = parse_status_response(&response).unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].kind, "RuntimeReady");
        assert!(conditions[0].status);
        assert!(!conditions[1].status);
        assert_eq!(conditions[1].reason, "NetworkPluginNotReady");
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(parse_status_response(&[0x0a, 0x05, 0x01]).is_err());
    }
}
