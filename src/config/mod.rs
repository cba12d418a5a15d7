//! Config file: parse (TOML) and validate into a [`crate::model::Model`].
