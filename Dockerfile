# Hub image (also runs the agent: same CLI). Used by docker-compose.yml (hub1, hub2).
FROM node:20-slim

ENV NODE_ENV=production
WORKDIR /app

# Dependencies first, for layer caching (no scripts: the sources the "prepare" build
# needs are not here yet). tsx (with esbuild) and typescript are runtime dependencies.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# Only the sources the processes need (never the host's node_modules, certs or test data).
COPY tsconfig.json ./
COPY proto ./proto
COPY gen ./gen
COPY lib ./lib
COPY hub ./hub
COPY agent ./agent
COPY cli ./cli
COPY bin ./bin
COPY scripts/build.mjs ./scripts/build.mjs
# The bundle bin/branchsync.mjs runs (dist/, starts without transpiling).
RUN node scripts/build.mjs

USER node
# 50051: gRPC data plane (SyncService, grpc.health.v1); 8080: control plane + /healthz, /metrics.
EXPOSE 50051 8080
STOPSIGNAL SIGTERM
CMD ["node", "bin/branchsync.mjs", "hub"]
