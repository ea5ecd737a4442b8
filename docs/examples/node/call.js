// Calls quartet from Node.js with the repository's protos, loaded at run time by proto-loader.
// Usage: QUARTET_TOKEN=<access token or API key> node call.js HOST:PORT
// Prints one JSON line per call: a stored score, then the error of a call missing its input.
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const repo = path.resolve(__dirname, "../../..");
const includeDirs = [path.join(repo, "protos"), path.join(repo, "third_party/protos")];

// Field names as in the protos; int64 as strings (JavaScript numbers stop at 2^53).
const definition = protoLoader.loadSync("quartet/score/v1/score_service.proto", {
  includeDirs,
  keepCase: true,
  longs: String,
  defaults: true,
});
const { ScoreService } = grpc.loadPackageDefinition(definition).quartet.score.v1;

// google.rpc.Status and its details, to read the grpc-status-details-bin trailer.
const errors = new protobuf.Root();
errors.resolvePath = (_origin, target) =>
  includeDirs.map((dir) => path.join(dir, target)).find(fs.existsSync) ?? target;
const errorProtos = ["google/rpc/status.proto", "google/rpc/error_details.proto"];
errors.loadSync(errorProtos, { keepCase: true });
const Status = errors.lookupType("google.rpc.Status");

function statusDetails(error) {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  if (!bytes) return [];
  return Status.decode(bytes).details.map((any) => {
    const type = errors.lookupType(any.type_url.split("/").pop());
    return { "@type": any.type_url, ...type.toObject(type.decode(any.value)) };
  });
}

const client = new ScoreService(process.argv[2], grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.QUARTET_TOKEN}`);

client.CreateScore({ input_value: 2.5 }, metadata, (error, score) => {
  if (error) throw error;
  console.log(JSON.stringify({ score }));
  client.CreateScore({}, metadata, (failure) => {
    console.log(JSON.stringify({ error: { code: failure.code, details: statusDetails(failure) } }));
    client.close();
  });
});
