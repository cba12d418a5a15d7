//! What natlb keeps in `daemon.state_dir` across restarts: the name of the table it owns (so a
//! table renamed while natlb was stopped is not left forwarding), and the backends' last known
//! health (`health::store`). Every file is replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

const TABLE_FILE: &str = "table";

/// Writes `contents` to `dir/name` atomically: temporary file, fsync, rename, fsync the
/// directory. A crash leaves the old or the new file, never a mix.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn table_path(dir: &Path) -> PathBuf {
    dir.join(TABLE_FILE)
}

/// The table natlb last owned, if it recorded one.
pub fn load_table(dir: &Path) -> Option<String> {
    let name = std::fs::read_to_string(table_path(dir)).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

pub fn save_table(dir: &Path, table: &str) -> std::io::Result<()> {
    write_atomic(dir, TABLE_FILE, format!("{table}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_name_round_trip() {
        let dir = std::env::temp_dir().join(format!("natlb-statedir-{}", std::process::id()));
        assert_eq!(load_table(&dir), None);
        save_table(&dir, "natlb").unwrap();
        assert_eq!(load_table(&dir).as_deref(), Some("natlb"));
        save_table(&dir, "gw").unwrap();
        assert_eq!(load_table(&dir).as_deref(), Some("gw"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
