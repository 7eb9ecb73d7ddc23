-- A tenant in a zone 45 minutes off the hour (Asia/Kathmandu, UTC+5:45; Australia/Eucla, UTC+8:45) has its local
-- hours start 15 minutes past the UTC hour, not 45: the offset was taken with the wrong sign. No zone is 15 minutes
-- off the hour, so every stored 45 was one of these. Hour rollups written for them before are misaligned: rerun
-- them (`handler rollup-rerun`, docs/operations.md, "Tenants in quarter-hour zones").
UPDATE tenants SET window_offset_minutes = 15 WHERE window_offset_minutes = 45;
