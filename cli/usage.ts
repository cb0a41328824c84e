export const ADMIN_USAGE = `usage:
  branchsync admin tenant create <tenant-id> [--name NAME]
  branchsync admin tenant list
  branchsync admin branch create <tenant-id> <branch-id> [--name NAME]   (prints the API key once)
  branchsync admin branch list <tenant-id>
  branchsync admin policy set <tenant-id> <schema.table> --strategy last-writer-wins|branch-priority|column-merge|manual
                              [--priority hq,store-1] [--delta qty,balance]
  branchsync admin policy list <tenant-id>
  branchsync admin conflicts list <tenant-id> [--table T] [--status open|resolved|resolved-manually] [--limit N]
  branchsync admin conflicts show <tenant-id> <conflict-id>
  branchsync admin conflicts resolve <tenant-id> <conflict-id> --take existing|incoming|row [--row '{"id":1,...}']
  branchsync admin quarantine list <tenant-id> [--branch B] [--status quarantined|retry|discard|applied|discarded]
  branchsync admin quarantine retry|discard <tenant-id> <branch-id> <seq>`;
