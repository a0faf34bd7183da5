//! Values across the boundary: parameters sent as text (the server converts them to the
//! types it inferred for the statement), results converted from the binary protocol for the
//! types with an exact counterpart in `sqlite.value`.

use bytes::BytesMut;
use postgres::types::{Format, FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::PgResult;
use crate::bindings::postgres::PgError;
use crate::bindings::sqlite::{Rows, Value};

/// A parameter in PostgreSQL's text format, accepted for any type.
#[derive(Debug)]
pub struct TextParam(Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// The guest's values as text parameters (bytea in its hex form).
pub fn params(values: &[Value]) -> Vec<TextParam> {
    values
        .iter()
        .map(|v| {
            TextParam(match v {
                Value::Null => None,
                Value::Integer(i) => Some(i.to_string()),
                Value::Real(f) => Some(format!("{f:?}")),
                Value::Text(s) => Some(s.clone()),
                Value::Blob(b) => {
                    let mut hex = String::with_capacity(2 + 2 * b.len());
                    hex.push_str("\\x");
                    for byte in b {
                        hex.push_str(&format!("{byte:02x}"));
                    }
                    Some(hex)
                }
            })
        })
        .collect()
}

/// References for the driver's parameter slice.
pub fn refs(params: &[TextParam]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// One result cell.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(match *ty {
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::OID => Value::Integer(i64::from(u32::from_sql(ty, raw)?)),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            _ if <String as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => return Err(format!("unconverted type {ty}").into()),
        }))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// The driver's rows as the guest's.
pub fn rows(rows: &[postgres::Row]) -> PgResult<Rows> {
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cells = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            match row.try_get::<_, Cell>(i) {
                Ok(c) => cells.push(c.0),
                Err(_) => {
                    return Err(PgError::Invalid(format!(
                        "column `{0}` has type {1}, which idem does not convert; cast it in the \
                         query (`{0}::text`)",
                        column.name(),
                        column.type_()
                    )));
                }
            }
        }
        out.push(cells);
    }
    Ok(Rows { columns, rows: out })
}
