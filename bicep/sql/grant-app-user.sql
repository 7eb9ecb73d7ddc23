-- Makes the Function App's user-assigned managed identity a database user with the least it needs.
--
-- Run once per database, after the first deployment, connected to the Meterline database (not master) as the
-- server's Microsoft Entra administrator (bicep/main.bicep: sqlAdminLogin), for example:
--
--   sqlcmd -S <server>.database.windows.net -d meterline --authentication-method ActiveDirectoryDefault \
--          -v IDENTITY_NAME="id-meterline-prod" -i bicep/sql/grant-app-user.sql
--
-- IDENTITY_NAME is the managed identity's name (deployment output `identityName`). The same script works for a
-- SQL database in Microsoft Fabric (connect with its SQL connection string).
--
-- What the handler does, and so what it gets:
--   * reads and writes rows in every Meterline table      -> db_datareader, db_datawriter
--   * runs its own stored logic (none today) and sp_getapplock in `handler migrate` -> EXECUTE
--   * applies schema migrations (`handler migrate`)       -> db_ddladmin
-- db_ddladmin is only needed by `handler migrate`. Where migrations run under a separate identity (the deploy
-- workflow's, for example), leave that role out: the serving app then cannot change the schema at all.
-- No db_owner, no server roles, nothing in master.
--
-- The audit trail is append-only (ARCHITECTURE.md): on SQL Server 2022 / Azure SQL, migration 0002 makes
-- audit_events an append-only ledger table, so even db_datawriter cannot update or delete its rows.

SET NOCOUNT ON;
SET XACT_ABORT ON;

DECLARE @identity sysname = N'$(IDENTITY_NAME)';
DECLARE @sql nvarchar(max);

IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = @identity)
BEGIN
    SET @sql = N'CREATE USER ' + QUOTENAME(@identity) + N' FROM EXTERNAL PROVIDER;';
    EXEC sys.sp_executesql @sql;
END;

IF IS_ROLEMEMBER(N'db_datareader', @identity) = 0
BEGIN
    SET @sql = N'ALTER ROLE db_datareader ADD MEMBER ' + QUOTENAME(@identity) + N';';
    EXEC sys.sp_executesql @sql;
END;

IF IS_ROLEMEMBER(N'db_datawriter', @identity) = 0
BEGIN
    SET @sql = N'ALTER ROLE db_datawriter ADD MEMBER ' + QUOTENAME(@identity) + N';';
    EXEC sys.sp_executesql @sql;
END;

IF IS_ROLEMEMBER(N'db_ddladmin', @identity) = 0
BEGIN
    SET @sql = N'ALTER ROLE db_ddladmin ADD MEMBER ' + QUOTENAME(@identity) + N';';
    EXEC sys.sp_executesql @sql;
END;

SET @sql = N'GRANT EXECUTE TO ' + QUOTENAME(@identity) + N';';
EXEC sys.sp_executesql @sql;

SELECT dp.name AS principal, r.name AS role
FROM sys.database_role_members AS m
JOIN sys.database_principals AS r ON r.principal_id = m.role_principal_id
JOIN sys.database_principals AS dp ON dp.principal_id = m.member_principal_id
WHERE dp.name = @identity
ORDER BY r.name;
