export const ADMIN_USAGE = `usage:
  branchsync admin tenant create <tenant-id> [--name NAME]
  branchsync admin tenant list
  branchsync admin branch create <tenant-id> <branch-id> [--name NAME]   (prints the API key once)
  branchsync admin branch list <tenant-id>`;
