-- A tenant in a zone 45 minutes off the hour has its local hours start 15 minutes past the UTC hour, not 45 (the
-- SQLite migration of the same version says why).
UPDATE dbo.tenants SET window_offset_minutes = 15 WHERE window_offset_minutes = 45;
