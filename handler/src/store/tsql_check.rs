//! Parse-checks every T-SQL statement Meterline sends to SQL Server, since no SQL Server runs on our machines.
//!
//! Statements come from the migration files, from `mssql::STATEMENTS` (every aggregate's list), from `mssql::generated_examples` (statements
//! generated from a size) and, for the statements assembled at run
//! time, from `mssql::queries::assembled_examples` (every shape the assembling functions produce). Each is parsed with sqlparser's
//! `MsSqlDialect`; the few it cannot parse are listed in [`KNOWN_UNPARSEABLE`] with the reason, and the test
//! fails if a listed statement starts parsing (so the list never goes stale) or an unlisted one fails.

use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

use super::migrations::MSSQL;

/// Statements sqlparser 0.64 cannot parse: a prefix that identifies each, why it is right as written, and the
/// textual rewrites after which it must parse (so a typo in the rest of the statement is still caught).
struct Unparseable {
    prefix: &'static str,
    why: &'static str,
    rewrites: &'static [(&'static str, &'static str)],
}

/// Why a T-SQL `ALTER COLUMN` (migration 16's binary collations) is listed below.
const ALTER_COLUMN: &str = "T-SQL's ALTER COLUMN takes the whole new definition, `type [COLLATE name] [NOT] NULL`; \
                            sqlparser knows only the standard's SET DATA TYPE form, without a collation";

const KNOWN_UNPARSEABLE: &[Unparseable] = &[
    Unparseable {
        prefix: "CREATE TABLE dbo.documents",
        why: "PRIMARY KEY NONCLUSTERED: the clustered index is cx_documents_tenant; sqlparser lacks NONCLUSTERED",
        rewrites: &[("PRIMARY KEY NONCLUSTERED", "PRIMARY KEY")],
    },
    Unparseable {
        prefix: "CREATE CLUSTERED INDEX cx_documents_tenant",
        why: "CREATE CLUSTERED INDEX is T-SQL's syntax for the table's clustered index; sqlparser lacks CLUSTERED",
        rewrites: &[("CREATE CLUSTERED INDEX", "CREATE INDEX")],
    },
    Unparseable {
        prefix: "EXEC @status = sp_getapplock",
        why: "EXEC @status = proc reads a procedure's return code; sqlparser lacks the assignment form",
        rewrites: &[("EXEC @status = sp_getapplock", "EXEC sp_getapplock")],
    },
    Unparseable {
        prefix: "ALTER TABLE dbo.document_tags ALTER COLUMN tag NVARCHAR(64)",
        why: ALTER_COLUMN,
        rewrites: &[(
            "ALTER COLUMN tag NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL",
            "ALTER COLUMN tag SET DATA TYPE NVARCHAR(64)",
        )],
    },
    Unparseable {
        prefix: "ALTER TABLE dbo.inbox_messages ALTER COLUMN source NVARCHAR(200)",
        why: ALTER_COLUMN,
        rewrites: &[(
            "ALTER COLUMN source NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL",
            "ALTER COLUMN source SET DATA TYPE NVARCHAR(200)",
        )],
    },
    Unparseable {
        prefix: "ALTER TABLE dbo.inbox_messages ALTER COLUMN event_id NVARCHAR(200)",
        why: ALTER_COLUMN,
        rewrites: &[(
            "ALTER COLUMN event_id NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL",
            "ALTER COLUMN event_id SET DATA TYPE NVARCHAR(200)",
        )],
    },
];

/// Splits a T-SQL script into statements at `;` outside strings, bracketed names and comments.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                current.push(c);
                for s in chars.by_ref() {
                    current.push(s);
                    if s == '\'' {
                        // A doubled quote '' is an escaped quote: the loop continues with the next quote.
                        break;
                    }
                }
            }
            '[' => {
                current.push(c);
                for s in chars.by_ref() {
                    current.push(s);
                    if s == ']' {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for s in chars.by_ref() {
                    if s == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            ';' => {
                if !current.trim().is_empty() {
                    statements.push(current.trim().to_owned());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

fn all_statements() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for migration in MSSQL {
        for (i, statement) in split_statements(migration.sql).into_iter().enumerate() {
            // A statement run through `EXEC (N'...')` (one literal) is parsed too, not just the EXEC around it.
            if let Some(inner) = exec_literal(&statement) {
                all.push((format!("migration {} statement {} (its EXEC text)", migration.version, i + 1), inner));
            }
            all.push((format!("migration {} statement {}", migration.version, i + 1), statement));
        }
    }
    for (name, sql) in super::mssql::STATEMENTS.iter().flat_map(|list| list.iter()) {
        for statement in split_statements(sql) {
            all.push((format!("query {name}"), statement));
        }
    }
    for (name, sql) in super::mssql::generated_examples() {
        all.push((format!("generated {name}"), sql));
    }
    // Statements assembled at run time (the document listing): every shape the assembling functions produce.
    for (name, assembled) in super::mssql::queries::assembled_examples() {
        for statement in split_statements(&assembled.sql) {
            all.push((format!("assembled {name}"), statement));
        }
    }
    all
}

/// The statement inside `EXEC (N'...')` when the argument is one string literal (quotes undoubled).
fn exec_literal(statement: &str) -> Option<String> {
    let literal = statement.trim().strip_prefix("EXEC (N'")?.strip_suffix("')")?;
    // One literal: every quote inside comes doubled, so the text has no concatenation.
    (!literal.replace("''", "").contains('\'')).then(|| literal.replace("''", "'"))
}

#[test]
fn every_tsql_statement_parses_or_is_listed_with_a_reason() {
    let mut failures = Vec::new();
    let mut listed_but_parsing = Vec::new();
    let statements = all_statements();
    assert!(statements.len() > 40, "the statement collection found only {} statements", statements.len());
    for (origin, statement) in &statements {
        let listed = KNOWN_UNPARSEABLE.iter().find(|u| statement.starts_with(u.prefix));
        match (Parser::parse_sql(&MsSqlDialect {}, statement), listed) {
            (Ok(_), None) => {}
            (Ok(_), Some(u)) => listed_but_parsing.push(format!("{origin}: {} (listed because: {})", u.prefix, u.why)),
            (Err(_), Some(u)) => {
                let rewritten = u.rewrites.iter().fold(statement.clone(), |s, (from, to)| {
                    assert!(s.contains(from), "{origin}: the rewrite for {:?} no longer applies", u.prefix);
                    s.replace(from, to)
                });
                if let Err(e) = Parser::parse_sql(&MsSqlDialect {}, &rewritten) {
                    failures.push(format!("{origin} (after its listed rewrite): {e}"));
                }
            }
            (Err(e), None) => failures.push(format!("{origin}: {e}\n    {}", statement.lines().next().unwrap_or(""))),
        }
    }
    assert!(failures.is_empty(), "T-SQL that does not parse:\n{}", failures.join("\n"));
    assert!(listed_but_parsing.is_empty(), "listed as unparseable but parses now: {listed_but_parsing:?}");
}

/// The audit table is created through dynamic SQL (to add the ledger clause where supported); check its text too.
#[test]
fn the_dynamic_audit_table_definition_parses() {
    let script = MSSQL.iter().find(|m| m.name == "data_model").expect("data model migration").sql;
    let start = script.find("DECLARE @audit_columns NVARCHAR(MAX) = N'").expect("audit columns") + 41;
    let end = start + script[start..].find("';").expect("end of the audit columns string");
    let columns = script[start..end].replace("''", "'");
    let statement =
        format!("CREATE TABLE dbo.audit_events {columns}").replace("PRIMARY KEY NONCLUSTERED", "PRIMARY KEY");
    Parser::parse_sql(&MsSqlDialect {}, &statement).unwrap_or_else(|e| panic!("{e}\n{statement}"));
}

#[test]
fn the_text_of_a_one_literal_exec_is_checked_too() {
    assert_eq!(
        exec_literal("EXEC (N'CREATE INDEX ix ON t (c) WHERE c <> ''x''')").as_deref(),
        Some("CREATE INDEX ix ON t (c) WHERE c <> 'x'")
    );
    assert_eq!(exec_literal("EXEC (N'CREATE TABLE t ' + @columns)"), None, "concatenated: checked on its own");
    assert!(
        all_statements()
            .iter()
            .any(|(origin, sql)| origin.contains("EXEC text") && sql.contains("ix_usage_events_lease"))
    );
}

#[test]
fn the_splitter_respects_strings_comments_and_brackets() {
    let parts = split_statements("SELECT 'a;b' -- c;d\n; SELECT [x;y] FROM t;\n\n");
    assert_eq!(parts, vec!["SELECT 'a;b' \n".trim().to_owned(), "SELECT [x;y] FROM t".to_owned()]);
    assert_eq!(split_statements("EXEC (N'it''s; fine');").len(), 1);
}

/// An assembled statement binds exactly one value per placeholder: `@P1` to `@Pn` all appear, and no other.
#[test]
fn assembled_statements_bind_one_value_per_placeholder() {
    for (name, assembled) in super::mssql::queries::assembled_examples() {
        let mut used: Vec<usize> = assembled
            .sql
            .match_indices("@P")
            .map(|(at, _)| {
                let digits: String = assembled.sql[at + 2..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or_else(|_| panic!("{name}: a placeholder without a number"))
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        let expected: Vec<usize> = (1..=assembled.args.len()).collect();
        assert_eq!(used, expected, "{name}: placeholders vs bound values\n{}", assembled.sql);
    }
}
