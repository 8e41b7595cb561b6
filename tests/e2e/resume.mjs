// The patient's WebSocket dies in the middle of a video visit. While it is down the support
// person and the provider write in the chat and the patient writes too; the page resumes its
// session (every missed frame replayed, nothing lost or doubled), the call stays up, and an ICE
// restart through the hub afterwards keeps it up as well. Last, the patient reloads the page:
// it rejoins the call with a new peer connection.

import {
  run, log, until, pageUntil, check, onboard, newPage, screenshot, patientIntake, consoleSignIn, chatBodies,
  consoleSend, patientSend, waitForVideo, framesDecoded,
} from './harness.mjs';

const OFFLINE_MS = 4000;

/** The ICE username fragment of the page's current local description. */
function localUfrag(page) {
  return page.evaluate(() => /a=ice-ufrag:(\S+)/.exec(window.visithubDemo.call.pc.localDescription.sdp)?.[1]);
}

function once(list, text) {
  return list.filter((t) => t === text).length === 1;
}

await run('resume', async ({ hub, browser }) => {
  await onboard(hub, 'sam', 'Sam Support', 'support', ['WA']);
  await onboard(hub, 'dr-lee', 'Dr. Lee', 'provider', ['WA']);
  const provider = await newPage(browser, hub, 'provider');
  await consoleSignIn(provider, 'dr-lee');
  const support = await newPage(browser, hub, 'support');
  await consoleSignIn(support, 'sam');
  const patient = await newPage(browser, hub, 'patient');
  const visitId = await patientIntake(patient, { name: 'Bea Example', state: 'WA', reason: 'Rash on both arms' });

  const row = `.queue[data-state="WA"] tr[data-visit-id="${visitId}"]`;
  await support.waitForSelector(row);
  await support.click(`${row} .join`);
  await support.waitForSelector(`[data-chat="${visitId}"]`);
  await consoleSend(support, visitId, 'Support here, before the visit.');
  await until('the first message', async () => (await chatBodies(patient, '#chat-log')).length === 1);

  await provider.waitForSelector(row);
  await provider.click(`${row} .claim`);
  await pageUntil(provider, 'the claim', () => document.getElementById('visit-status').textContent === 'claimed');
  await provider.click('#start-visit');
  await provider.waitForSelector(`[data-chat="${visitId}"]`);
  await Promise.all([waitForVideo(patient), waitForVideo(provider)]);
  log('call connected');

  // The patient's socket drops, and the page stays offline for a while.
  const sessionBefore = await patient.evaluate(() => window.visithubDemo.client.sessionId);
  await patient.evaluate((ms) => window.visithubDemo.client.simulateDisconnect({ offlineMs: ms }), OFFLINE_MS);
  await pageUntil(patient, 'the patient page to notice the drop', () => window.visithubDemo.client.status !== 'open');
  check((await patient.textContent('#conn')) !== 'connected', 'the page shows it is offline');
  await consoleSend(support, visitId, 'Support: are you still with us?');
  await consoleSend(provider, visitId, 'Dr. Lee: I can still see you.');
  await patientSend(patient, 'Patient: typed while offline.');
  const supportLog = `[data-chat="${visitId}"] .chat-log`;
  await until('the caregivers to get their own messages', async () =>
    (await chatBodies(support, supportLog)).includes('Dr. Lee: I can still see you.'),
  );
  check(
    !(await chatBodies(patient, '#chat-log')).includes('Support: are you still with us?'),
    'the patient page was really offline when the caregivers wrote',
  );
  const framesBefore = await framesDecoded(patient);
  log(`offline; patient had decoded ${framesBefore} frames`);
  await screenshot(patient, 'resume-patient-offline.png');

  // It comes back on the same session, with everything it missed replayed.
  await pageUntil(patient, 'the page to resume', () => window.visithubDemo.client.resumes === 1, undefined, OFFLINE_MS + 20000);
  const state = await patient.evaluate(() => ({
    status: window.visithubDemo.client.status,
    session: window.visithubDemo.client.sessionId,
    resumed: window.visithubDemo.client.lastResume,
  }));
  check(
    state.status === 'open' && state.session === sessionBefore && state.resumed.recovered === true && state.resumed.replayed > 0,
    `resumed the same session with the missed frames replayed: ${JSON.stringify(state)}`,
  );
  const expected = [
    'Support here, before the visit.',
    'Support: are you still with us?',
    'Dr. Lee: I can still see you.',
    'Patient: typed while offline.',
  ];
  await until('every message on the patient page', async () => {
    const bodies = await chatBodies(patient, '#chat-log');
    return expected.every((t) => once(bodies, t)) && bodies.length === expected.length;
  });
  await until('the patient message on both consoles', async () =>
    once(await chatBodies(support, supportLog), 'Patient: typed while offline.') &&
    once(await chatBodies(provider, supportLog), 'Patient: typed while offline.'),
  );
  const seqs = await patient.$$eval('#chat-log li', (els) => els.map((e) => Number(e.dataset.seq)));
  check(seqs.join(',') === '1,2,3,4', `the patient's conversation has no gap: ${seqs}`);
  log('resumed: no message lost or doubled');

  // The call never went down: still connected, still decoding new frames, on both sides.
  check(await patient.evaluate(() => window.visithubDemo.call.pc.connectionState === 'connected'), 'patient call up');
  check(await provider.evaluate(() => window.visithubDemo.call.pc.connectionState === 'connected'), 'provider call up');
  await until('new frames on the patient page', async () => (await framesDecoded(patient)) > framesBefore + 10);
  const providerFrames = await framesDecoded(provider);
  await until('new frames on the console', async () => (await framesDecoded(provider)) > providerFrames + 10);
  await screenshot(patient, 'resume-patient-connected.png');
  await screenshot(provider, 'resume-provider-connected.png');

  // An ICE restart (what the page does when the media path broke meanwhile) goes through the
  // hub and the call comes back with new ICE credentials on both sides.
  const ufrags = { patient: await localUfrag(patient), provider: await localUfrag(provider) };
  await patient.evaluate(() => window.visithubDemo.call.restartIce());
  await until('new ICE credentials on both sides', async () =>
    (await localUfrag(patient)) !== ufrags.patient && (await localUfrag(provider)) !== ufrags.provider,
  );
  await pageUntil(patient, 'the call after the ICE restart', () =>
    window.visithubDemo.call.pc.iceConnectionState === 'connected' || window.visithubDemo.call.pc.iceConnectionState === 'completed',
  );
  const afterRestart = await framesDecoded(provider);
  await until('frames after the ICE restart', async () => (await framesDecoded(provider)) > afterRestart + 10);
  log('ICE restart kept the call up');

  // The patient reloads the page mid-call: it comes back from the tab's storage on a new
  // session, joins with a new peer connection, and the provider's side answers from a new one.
  await patient.reload();
  await pageUntil(patient, 'the reloaded page to reconnect', () => window.visithubDemo.client?.status === 'open');
  check(
    (await patient.evaluate(() => window.visithubDemo.client.sessionId)) !== sessionBefore,
    'a reloaded page has a new session',
  );
  // The reloaded page's connection is new, so its decoded frames all came after the reload; the
  // console's keep counting, from the new connection of the patient.
  const beforeRejoin = await framesDecoded(provider);
  await Promise.all([waitForVideo(patient), waitForVideo(provider)]);
  await until('the console to decode the rejoined video', async () => (await framesDecoded(provider)) > beforeRejoin + 10);
  await until('the chat after the reload', async () => (await chatBodies(patient, '#chat-log')).length === expected.length);
  await screenshot(patient, 'resume-patient-reloaded.png');
  log('the reloaded page rejoined the call');
});
