// A whole visit in a real browser: a refused intake shows when the state opens again; a patient
// does intake in WA; a support person sees the patient in the live queue and they chat both
// ways (with an unread count while the conversation is closed); a provider claims the visit
// and starts it; both pages connect an RTCPeerConnection and decode each other's (fake camera)
// video; the provider ends the call and the visit, and both pages say so.

import {
  run, log, until, pageUntil, check, onboard, adminCall, newPage, screenshot, patientIntake, consoleSignIn,
  chatBodies, consoleSend, patientSend, waitForVideo, framesDecoded,
} from './harness.mjs';

/** Hours for every weekday that exclude the current hour in `zone`, opening two hours from now. */
function closedNow(zone) {
  const hour = Number(new Intl.DateTimeFormat('en-US', { timeZone: zone, hour: 'numeric', hourCycle: 'h23' }).format(new Date()));
  const pad = (h) => `${String(h).padStart(2, '0')}:00`;
  const open = (hour + 2) % 24;
  const close = open + 1;
  const day = { open: pad(open), close: pad(close) };
  return Object.fromEntries(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'].map((d) => [d, day]));
}

await run('visit', async ({ hub, browser }) => {
  await onboard(hub, 'sam', 'Sam Support', 'support', ['WA', 'OR']);
  await onboard(hub, 'dr-lee', 'Dr. Lee', 'provider', ['WA']);

  // A refusal: Oregon is closed at this hour; the page says when it opens.
  await adminCall(hub, 'PATCH', '/v1/states/OR/settings', { hours: closedNow('America/Los_Angeles') });
  const refused = await newPage(browser, hub, 'refused-patient');
  await refused.goto(`${hub.url}/demo/patient.html`);
  await refused.fill('#name', 'Olive');
  await refused.selectOption('#state', 'OR');
  await refused.fill('#reason', 'Earache');
  await refused.click('#intake-submit');
  await refused.waitForSelector('#intake-error:not(.hidden)');
  const refusal = await refused.textContent('#intake-error');
  check(await refused.getAttribute('#intake-error', 'data-code') === 'outside_hours', `refusal code (${refusal})`);
  check(/closed right now/.test(refusal) && /open again (today|\w+day)/.test(refusal), `refusal text: ${refusal}`);
  log(`refusal shown: ${refusal}`);
  await screenshot(refused, 'visit-refused-outside-hours.png');
  await refused.context().close();

  const provider = await newPage(browser, hub, 'provider');
  await consoleSignIn(provider, 'dr-lee');
  const support = await newPage(browser, hub, 'support');
  await consoleSignIn(support, 'sam');

  const patient = await newPage(browser, hub, 'patient');
  const visitId = await patientIntake(patient, { name: 'Ann Example', state: 'WA', reason: 'Sore throat since Monday' });
  await pageUntil(patient, 'a place in line', () => document.getElementById('position').textContent === '1');
  log(`intake done: visit ${visitId}, position 1`);

  // The support console sees the patient arrive in WA's queue (a live delta) and opens a chat.
  const row = `.queue[data-state="WA"] tr[data-visit-id="${visitId}"]`;
  await support.waitForSelector(row);
  check((await support.textContent(row)).includes('Ann Example'), 'the queue row names the patient');
  await support.click(`${row} .join`);
  await support.waitForSelector(`[data-chat="${visitId}"]`);
  await consoleSend(support, visitId, 'Hello Ann, this is Sam from the care team.');
  await until('the patient to get the support message', async () =>
    (await chatBodies(patient, '#chat-log')).includes('Hello Ann, this is Sam from the care team.'),
  );
  await patientSend(patient, 'Hi Sam, my throat hurts when I swallow.');
  await until('support to get the patient message', async () =>
    (await chatBodies(support, `[data-chat="${visitId}"] .chat-log`)).includes('Hi Sam, my throat hurts when I swallow.'),
  );
  log('chat went both ways');

  // A conversation that is not open counts unread messages; opening it reads them.
  const listItem = `#conversations li[data-visit-id="${visitId}"]`;
  await support.click(`[data-chat="${visitId}"] .hide`);
  await patientSend(patient, 'One more thing: I have a fever too.');
  await until('an unread count of 1', async () => (await support.textContent(`${listItem} .unread`)) === '1');
  await support.click(`${listItem} .open-chat`);
  await until('the message in the reopened conversation', async () =>
    (await chatBodies(support, `[data-chat="${visitId}"] .chat-log`)).includes('One more thing: I have a fever too.'),
  );
  check((await support.textContent(`${listItem} .unread`)) === '0', 'opening the conversation read it');
  log('unread count shown and cleared');

  // Support marks WA busy; every console following WA sees the flag (a live queue.delta).
  const flag = '.queue[data-state="WA"] .busy-flag';
  await support.click('.queue[data-state="WA"] button.busy-toggle');
  await until('the busy flag on the provider console', async () => (await provider.textContent(flag)) === 'busy');
  await support.click('.queue[data-state="WA"] button.busy-toggle');
  await until('the busy flag cleared', async () => (await provider.textContent(flag)) === 'normal intake');
  log('busy flag set and cleared');

  // The provider claims the visit from the live queue and starts the video visit.
  await provider.waitForSelector(row);
  await provider.click(`${row} .claim`);
  await pageUntil(provider, 'the claim', () => document.getElementById('visit-status').textContent === 'claimed');
  await pageUntil(patient, 'the patient to see the claim', () => window.visithubDemo.status === 'claimed');
  await support.waitForSelector(row, { state: 'detached' });
  await provider.click('#start-visit');
  await Promise.all([waitForVideo(patient), waitForVideo(provider)]);
  const frames = { patient: await framesDecoded(patient), provider: await framesDecoded(provider) };
  log(`both sides connected and decoding video: ${JSON.stringify(frames)}`);
  check((await patient.textContent('#call-state')) === 'connected', 'the patient page shows the call connected');
  check((await provider.textContent('#call-state')) === 'connected', 'the console shows the call connected');
  check((await patient.textContent('#peer-name')) === 'Dr. Lee', 'the patient sees who is calling');
  await screenshot(patient, 'visit-patient-connected.png');
  await screenshot(provider, 'visit-provider-connected.png');
  await screenshot(support, 'visit-support-console.png');

  // The provider ends the call, then the visit.
  await provider.click('#end-call');
  await pageUntil(patient, 'the patient to see the call end', () => window.visithubDemo.status === 'wrap_up');
  check((await patient.textContent('#call-state')) === 'ended', 'the patient call shows ended');
  await provider.click('#finish-visit');
  await pageUntil(patient, 'the patient to see the visit end', () => window.visithubDemo.status === 'ended');
  await pageUntil(provider, 'the console to show the visit ended', () =>
    document.getElementById('visit-status').textContent === 'ended',
  );
  check((await patient.textContent('#visit-headline')) === 'Your visit has ended', 'the patient headline');
  check(await patient.evaluate(() => window.visithubDemo.call.pc.connectionState === 'closed'), 'patient pc closed');
  check(await provider.evaluate(() => window.visithubDemo.call.pc.connectionState === 'closed'), 'provider pc closed');
  await screenshot(patient, 'visit-patient-ended.png');
  await screenshot(provider, 'visit-provider-ended.png');
});
