// Call statistics from RTCPeerConnection.getStats() (W3C webrtc-stats): video bitrate
// and frame rate, round-trip time and the candidate route of the selected pair.

export function summarize(report, previous) {
  const byId = new Map();
  report.forEach((stat) => byId.set(stat.id, stat));
  const video = find(byId, (s) => s.type === 'inbound-rtp' && s.kind === 'video');
  const audio = find(byId, (s) => s.type === 'inbound-rtp' && s.kind === 'audio');
  const pair = selectedPair(byId);
  const local = pair && byId.get(pair.localCandidateId);
  const remote = pair && byId.get(pair.remoteCandidateId);
  const summary = {
    at: video?.timestamp ?? performance.timeOrigin + performance.now(),
    videoBytes: video?.bytesReceived ?? 0,
    audioBytes: audio?.bytesReceived ?? 0,
    framesDecoded: video?.framesDecoded ?? 0,
    framesReceived: video?.framesReceived ?? 0,
    framesDropped: video?.framesDropped ?? 0,
    width: video?.frameWidth ?? 0,
    height: video?.frameHeight ?? 0,
    codec: codecName(byId, video),
    fps: video?.framesPerSecond ?? null,
    rttMs: pair?.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null,
    route: route(local, remote),
    localType: local?.candidateType ?? null,
    remoteType: remote?.candidateType ?? null,
    bitrate: null,
  };
  if (previous && summary.at > previous.at) {
    const bytes = summary.videoBytes + summary.audioBytes - previous.videoBytes - previous.audioBytes;
    summary.bitrate = (bytes * 8 * 1000) / (summary.at - previous.at);
    if (summary.fps == null) {
      summary.fps = ((summary.framesDecoded - previous.framesDecoded) * 1000) / (summary.at - previous.at);
    }
  }
  return summary;
}

export function formatBitrate(bps) {
  if (bps == null) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}

function find(byId, test) {
  for (const stat of byId.values()) if (test(stat)) return stat;
  return null;
}

function selectedPair(byId) {
  const transport = find(byId, (s) => s.type === 'transport' && s.selectedCandidatePairId);
  if (transport) return byId.get(transport.selectedCandidatePairId) || null;
  return find(byId, (s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
}

// "host ↔ host (udp)"; a relayed route names the TURN transport too.
function route(local, remote) {
  if (!local || !remote) return null;
  const relay = local.candidateType === 'relay' && local.relayProtocol ? `, relay over ${local.relayProtocol}` : '';
  return `${local.candidateType} ↔ ${remote.candidateType} (${local.protocol}${relay})`;
}

function codecName(byId, rtp) {
  const codec = rtp?.codecId && byId.get(rtp.codecId);
  return codec?.mimeType ? codec.mimeType.replace(/^video\//, '') : null;
}
